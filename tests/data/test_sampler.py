import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dml.data import Digits, RandomBatches
from lightning_dml.data.sampler import ClassBalancedBatchSampler, ShuffledBatchSampler, most_batches
from lightning_dml.errors import DataError


def labels_with_sizes(sizes: list[int]) -> torch.Tensor:
    """Shuffled labels: class c has sizes[c] images."""
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def max_batches(groups_per_class: list[int], classes_per_batch: int) -> int:
    """Independent reference: most batches of P distinct classes the groups allow: sum min(g_c, b) >= P b."""
    b = 0
    while sum(min(g, b + 1) for g in groups_per_class) >= classes_per_batch * (b + 1):
        b += 1
    return b


def test_batches_are_p_classes_times_k_consecutive():
    labels = labels_with_sizes([5, 7, 4, 9, 6, 4, 11])  # sizes not multiples of K: last groups are topped up
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=3, samples_per_class=4)
    batches = list(sampler)
    assert batches
    for batch in batches:
        assert len(batch) == 12
        blocks = labels[batch].view(3, 4)
        assert (blocks == blocks[:, :1]).all()  # K consecutive images per class
        assert len(set(blocks[:, 0].tolist())) == 3  # P distinct classes
        for block in torch.tensor(batch).view(3, 4):
            assert len(set(block.tolist())) == 4  # a topped-up group never repeats an image


@pytest.mark.parametrize(
    ("sizes", "classes_per_batch"),
    [([8, 8, 8, 8], 4), ([2] * 12, 4), ([6, 6, 6, 6, 6, 6], 3)],
)
def test_every_image_visited_once_when_sizes_are_multiples_of_k(sizes, classes_per_batch):
    labels = labels_with_sizes(sizes)
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch, samples_per_class=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        visited = [i for batch in sampler for i in batch]
        assert sorted(visited) == list(range(len(labels)))


def test_uneven_classes_use_all_possible_batches_every_epoch():
    generator = torch.Generator().manual_seed(1)
    for seed in range(5):
        groups = torch.randint(1, 8, (30,), generator=generator)
        if seed % 2:
            groups[0] = 60  # a class too large to fit: some of its groups cannot be used
        sampler = ClassBalancedBatchSampler(labels_with_sizes((3 * groups).tolist()), 8, 3, seed=seed)
        assert most_batches(groups.tolist(), 8) == max_batches(groups.tolist(), 8)
        for epoch in range(4):
            sampler.set_epoch(epoch)
            visited = [i for batch in sampler for i in batch]
            assert len(visited) == len(set(visited))  # no image twice when sizes are multiples of K
            assert len(visited) == 24 * max_batches(groups.tolist(), 8)


def test_deterministic_per_seed_and_epoch():
    labels = labels_with_sizes([6, 9, 4, 8, 5, 7])
    first, second = (ClassBalancedBatchSampler(labels, 2, 3, seed=7) for _ in range(2))
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    second.set_epoch(4)
    assert list(first) != list(second)
    other_seed = ClassBalancedBatchSampler(labels, 2, 3, seed=8)
    other_seed.set_epoch(3)
    assert list(first) != list(other_seed)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_whole_batches_of_the_global_plan(world_size):
    labels = labels_with_sizes([4 * n for n in (3, 5, 2, 4, 6, 3, 2, 5)])
    global_plan = ClassBalancedBatchSampler(labels, 3, 4, seed=5, num_replicas=1, rank=0)
    global_plan.set_epoch(2)
    plan = [tuple(batch) for batch in global_plan]
    per_rank = []
    for rank in range(world_size):
        sampler = ClassBalancedBatchSampler(labels, 3, 4, seed=5, num_replicas=world_size, rank=rank)
        sampler.set_epoch(2)
        per_rank.append([tuple(batch) for batch in sampler])
    assert len({len(batches) for batches in per_rank}) == 1
    assert len(per_rank[0]) == len(plan) // world_size > 0
    all_batches = [batch for batches in per_rank for batch in batches]
    assert set(all_batches) <= set(plan)
    assert len(set(all_batches)) == len(all_batches)
    images = [i for batch in all_batches for i in batch]
    assert len(images) == len(set(images))  # sizes are multiples of K: no image on two ranks


def test_world_is_read_from_torch_distributed_at_iteration_time(monkeypatch):
    labels = labels_with_sizes([4] * 12)
    sampler = ClassBalancedBatchSampler(labels, 2, 2)  # built before the "process group" exists
    assert len(sampler) == 12
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    global_plan = ClassBalancedBatchSampler(labels, 2, 2, num_replicas=1, rank=0)
    assert list(sampler) == list(global_plan)[1::3]


def test_len_equals_batches_yielded_and_is_the_same_every_epoch():
    labels = labels_with_sizes([3, 10, 4, 7, 5, 3, 8, 30])  # uneven: the old greedy plan varied in length
    for world_size in (1, 2, 3):
        for rank in range(world_size):
            sampler = ClassBalancedBatchSampler(labels, 3, 3, num_replicas=world_size, rank=rank)
            lengths = set()
            for epoch in range(8):
                sampler.set_epoch(epoch)
                lengths |= {len(sampler), len(list(sampler))}
            assert lengths == {max_batches([1, 4, 2, 3, 2, 1, 3, 10], 3) // world_size}


def test_lightning_calls_set_epoch():
    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.batches: list[tuple[int, list[int]]] = []

        def training_step(self, batch, batch_idx):
            self.batches.append((self.current_epoch, batch[0].flatten().long().tolist()))
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    labels = labels_with_sizes([4] * 6)
    sampler = ClassBalancedBatchSampler(labels, 2, 2, seed=3)
    dataset = TensorDataset(torch.arange(len(labels), dtype=torch.float32).unsqueeze(1))
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(dataset, batch_sampler=sampler))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert [batch for e, batch in model.batches if e == epoch] == list(sampler)


def test_error_names_small_classes_and_their_counts():
    labels = torch.tensor([0] * 4 + [1] * 2 + [2] * 5 + [3])
    with pytest.raises(DataError, match=r"1 \(2 images\), 3 \(1 images\); lower samples_per_class"):
        ClassBalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=3)


def test_error_when_fewer_classes_than_classes_per_batch():
    with pytest.raises(DataError, match="only 3 classes; lower classes_per_batch to at most 3"):
        ClassBalancedBatchSampler(torch.arange(3).repeat(4), classes_per_batch=4, samples_per_class=2)


def test_error_on_rank_outside_world():
    sampler = ClassBalancedBatchSampler(torch.arange(4).repeat(2), 2, 2, num_replicas=2, rank=2)
    with pytest.raises(DataError, match="outside num_replicas=2"):
        len(sampler)


def test_shuffled_batches_are_a_fresh_permutation_each_epoch_without_the_incomplete_batch():
    sampler = ShuffledBatchSampler(num_items=23, batch_size=5, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 4 and all(len(batch) == 5 for batch in batches)
        positions = [i for batch in batches for i in batch]
        assert len(set(positions)) == 20 and set(positions) <= set(range(23))
        epochs.append(positions)
    assert epochs[0] != epochs[1] != epochs[2]
    again = ShuffledBatchSampler(num_items=23, batch_size=5, seed=3)
    again.set_epoch(1)
    assert [i for batch in again for i in batch] == epochs[1]
    other_seed = ShuffledBatchSampler(num_items=23, batch_size=5, seed=4)
    other_seed.set_epoch(1)
    assert [i for batch in other_seed for i in batch] != epochs[1]


@pytest.mark.parametrize("world_size", [2, 3])
def test_shuffled_batches_are_shared_out_by_rank(world_size):
    plans = [
        list(ShuffledBatchSampler(40, 4, seed=1, num_replicas=world_size, rank=r)) for r in range(world_size)
    ]
    whole = list(ShuffledBatchSampler(40, 4, seed=1, num_replicas=1, rank=0))
    per_rank = 10 // world_size
    for rank, batches in enumerate(plans):
        assert batches == whole[rank::world_size][:per_rank]


def test_shuffled_batch_size_larger_than_the_set_is_refused():
    with pytest.raises(
        DataError, match=r"^batch_size=30 but the training set holds 20 images; set batch_size"
    ):
        ShuffledBatchSampler(20, 30)


def test_the_random_sampler_of_the_data_module_mixes_classes_in_batches_of_batch_size():
    module = Digits(protocol="closed_set", validation=[], sampler=RandomBatches(batch_size=50))
    module.setup("fit")
    loader = module.train_dataloader()
    assert isinstance(loader.batch_sampler, ShuffledBatchSampler)
    assert len(loader) == len(module.train_set) // 50
    labels = next(iter(loader))["label"]
    assert len(labels) == 50 and len(labels.unique()) > 2  # not class-balanced groups
