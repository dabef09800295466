"""The base ``RetrievalDataModule`` (splits, validation sets, zero-shot check, loaders), through Digits."""

import pytest
import torch
from sklearn.datasets import load_digits

from lightning_dml.data import ClassBalanced, Digits, RetrievalDataset
from lightning_dml.errors import DataError

# images per digit, straight from scikit-learn (the independent reference for every count below)
DIGIT_COUNTS = torch.bincount(torch.as_tensor(load_digits().target)).tolist()


def counts(dataset: RetrievalDataset) -> dict[int, int]:
    classes, numbers = dataset.class_ids.unique(return_counts=True)
    return dict(zip(classes.tolist(), numbers.tolist(), strict=True))


def test_zero_shot_trains_on_digits_0_to_4_and_tests_on_5_to_9():
    module = Digits(validation=["test"])
    module.setup()
    assert counts(module.train_set) == {d: DIGIT_COUNTS[d] for d in range(5)}
    assert counts(module.test_set) == {d: DIGIT_COUNTS[d] for d in range(5, 10)}
    assert module.test_set[0]["label"] in range(5, 10)  # evaluation sets keep the original class ids


def test_closed_set_holds_out_30_percent_of_every_digit():
    module = Digits(protocol="closed_set", validation=["seen"], val_images=0.25)
    module.setup()
    expected_test = {d: int(0.3 * n) for d, n in enumerate(DIGIT_COUNTS)}
    assert counts(module.test_set) == expected_test
    remaining = {d: n - expected_test[d] for d, n in enumerate(DIGIT_COUNTS)}
    assert counts(module.val_sets["val"]) == {d: int(0.25 * n) for d, n in remaining.items()}
    assert counts(module.train_set) == {d: n - int(0.25 * n) for d, n in remaining.items()}
    test_images = set(module.test_set.indices.tolist())
    train_images = set(module.train_set.indices.tolist()) | set(module.val_sets["val"].indices.tolist())
    assert not test_images & train_images and len(test_images | train_images) == sum(DIGIT_COUNTS)


def test_one_validation_set_is_named_val():
    module = Digits(validation=["unseen"], val_classes=2)
    module.setup()
    assert list(module.val_sets) == ["val"]
    unseen = module.val_sets["val"].class_ids.unique()
    assert len(unseen) == 2 and not torch.isin(unseen, module.train_set.class_ids).any()
    assert len(module.train_set) + len(module.val_sets["val"]) == sum(DIGIT_COUNTS[:5])


def test_all_validation_choices_get_their_own_names_and_partition_the_pool():
    module = Digits(validation=["seen", "unseen", "test"], val_classes=2, val_images=0.2)
    module.setup()
    assert list(module.val_sets) == ["val_seen", "val_unseen", "val_test"]
    seen, unseen = module.val_sets["val_seen"], module.val_sets["val_unseen"]
    assert module.val_sets["val_test"] is module.test_set
    assert torch.equal(seen.class_ids.unique(), module.train_set.class_ids.unique())
    assert not torch.isin(unseen.class_ids, module.train_set.class_ids).any()
    digits_0_to_4 = (torch.as_tensor(load_digits().target) < 5).nonzero().flatten().tolist()
    pools = [set(d.indices.tolist()) for d in (module.train_set, seen, unseen)]
    assert set.union(*pools) == set(digits_0_to_4) and sum(map(len, pools)) == len(digits_0_to_4)
    kept = counts(module.train_set)
    assert counts(seen) == {d: int(0.2 * (kept[d] + n)) for d, n in counts(seen).items()}
    assert [len(loader.dataset) for loader in module.val_dataloader()] == [
        len(seen),
        len(unseen),
        sum(DIGIT_COUNTS[5:]),
    ]


def test_validation_listed_twice_is_an_error():
    with pytest.raises(DataError, match="twice"):
        Digits(validation=["seen", "seen"])


class OverlappingDigits(Digits):
    """Digits whose test set (3–9) shares digits 3 and 4 with the training pool (0–4)."""

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        pool, _ = super().build()
        everything = RetrievalDataset(pool.source)
        return pool, everything.select(
            torch.isin(everything.class_ids, torch.arange(3, 10)).nonzero().flatten()
        )


def test_zero_shot_refuses_overlapping_classes_and_lists_them():
    with pytest.raises(DataError, match="training and test sets share 2 class ids: 3, 4;"):
        OverlappingDigits(validation=["seen"]).setup()
    closed = OverlappingDigits(validation=["seen"], protocol="closed_set")
    closed.setup()
    assert counts(closed.test_set) == {d: DIGIT_COUNTS[d] for d in range(3, 10)}


def test_training_labels_are_contiguous_while_class_ids_stay():
    module = Digits(train_classes=[2, 5, 7, 8], validation=["seen"])
    module.setup()
    class_ids, labels = module.train_set.class_ids, module.train_set.labels
    assert class_ids.unique().tolist() == [2, 5, 7, 8] and labels.unique().tolist() == [0, 1, 2, 3]
    assert torch.equal(labels, torch.searchsorted(class_ids.unique(), class_ids))
    position = (class_ids == 7).nonzero()[0].item()
    assert module.train_set[position]["label"] == 2


def test_holding_out_unseen_classes_renumbers_the_rest_from_zero():
    module = Digits(val_classes=2)
    module.setup()
    assert module.train_set.labels.unique().tolist() == [0, 1, 2]
    assert module.num_train_classes == 3


def test_same_seed_same_split_other_seed_other_split():
    def unseen(seed: int) -> list[int]:
        module = Digits(val_classes=2, seed=seed)
        module.setup()
        return module.val_sets["val"].class_ids.unique().tolist()

    splits = {seed: unseen(seed) for seed in range(6)}
    assert unseen(0) == splits[0]
    assert len({tuple(s) for s in splits.values()}) > 1


def test_summary_lists_images_and_classes_per_set():
    module = Digits(validation=["seen", "unseen"], val_classes=2)
    module.setup()
    lines = module.summary().splitlines()
    assert lines[0] == "Digits (zero_shot)" and lines[1].split() == ["set", "images", "classes"]
    sets = {"train": module.train_set, **module.val_sets, "test": module.test_set}
    assert [line.split() for line in lines[2:]] == [
        [name, str(len(ds)), str(len(ds.class_ids.unique()))] for name, ds in sets.items()
    ]
    assert [line.split()[0] for line in lines[2:]] == ["train", "val_seen", "val_unseen", "test"]


def test_num_train_classes_sets_up_on_first_use():
    module = Digits(validation=["test"])
    assert module.train_set is None
    assert module.num_train_classes == 5 and module.train_set is not None


def test_loaders_give_class_balanced_training_batches_and_ordered_evaluation_batches():
    module = Digits(validation=["test"], sampler=ClassBalanced(4, 3), eval_batch_size=100)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (12, 1, 8, 8) and batch["image"].dtype == torch.float32
    assert sorted(batch["label"].bincount().tolist())[-4:] == [3, 3, 3, 3]
    test_batch = next(iter(module.test_dataloader()))
    assert test_batch["index"].tolist() == list(range(100))
    assert module.evaluation_sets("test") == {"test": module.test_set}


def test_loader_workers_send_uint8_batches_finished_after_transfer_and_the_sets_stay_whole():
    from lightning import Trainer

    data = Digits(validation=["test"], sampler=ClassBalanced(4, 3), eval_batch_size=5)
    data.setup()
    whole = torch.stack([data.test_set[i]["image"] for i in range(5)])
    data.trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    assert not data.scales_after_transfer()  # no workers on the CPU: the sets' own images
    assert torch.equal(next(iter(data.test_dataloader()))["image"], whole)
    data.num_workers = 1
    batch = next(iter(data.test_dataloader()))
    assert data.scales_after_transfer() and batch["image"].dtype == torch.uint8
    finished = data.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(finished["image"], whole, rtol=0, atol=0)
    assert torch.equal(data.test_set[0]["image"], whole[0])  # the set itself still gives model inputs
    assert next(iter(data.train_dataloader()))["image"].dtype == torch.uint8


def test_loader_options_pin_and_prefetch_only_on_a_gpu():
    from lightning import Trainer

    from lightning_dml.data.datamodule import collate_items, loader_options

    cpu = Trainer(accelerator="cpu", devices=1, logger=False)
    options = {"num_workers": 0, "persistent_workers": False, "pin_memory": False}
    options["collate_fn"] = collate_items
    assert loader_options(cpu, None) == options
    assert loader_options(None, 3) == options | {"num_workers": 3, "persistent_workers": True}


def test_channels_last_images_collate_into_a_channels_last_batch_of_the_same_values():
    from torch.utils.data import default_collate

    from lightning_dml.data.datamodule import collate_items

    generator = torch.Generator().manual_seed(0)
    stored = [torch.randint(0, 256, (9, 11, 3), dtype=torch.uint8, generator=generator) for _ in range(4)]
    crops = [{"image": image.permute(2, 0, 1)[:, 1:8, 2:9], "label": i} for i, image in enumerate(stored)]
    batch = collate_items(crops)
    reference = default_collate([{**item, "image": item["image"].contiguous()} for item in crops])
    assert torch.equal(batch["image"], reference["image"]) and torch.equal(batch["label"], reference["label"])
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    plain = [{**item, "image": item["image"].contiguous()} for item in crops]
    assert collate_items(plain)["image"].is_contiguous()
