"""ClassPairTripletSampler, and the data module's G-DML options (sampler choice, train-reference protocol,
raw pixels, no augmentation)."""

import itertools

import pytest
import torch

from lightning_dml.data import ClassPairTriplets, ClassPairTripletSampler, Digits, Transforms
from lightning_dml.errors import DataError

LABELS = torch.tensor([0] * 9 + [1] * 7 + [2] * 8 + [3] * 10)[
    torch.randperm(34, generator=torch.Generator().manual_seed(0))
]


def test_each_batch_is_one_ordered_pair_with_b_distinct_anchors_positives_and_negatives():
    b = 3
    batches = list(ClassPairTripletSampler(LABELS, b, seed=1))
    pairs = []
    for batch in batches:
        assert len(batch) == 3 * b
        same, other = LABELS[batch[: 2 * b]], LABELS[batch[2 * b :]]
        assert len(set(batch[: 2 * b])) == 2 * b and len(set(batch[2 * b :])) == b
        assert same.unique().numel() == 1 and other.unique().numel() == 1 and same[0] != other[0]
        pairs.append((int(same[0]), int(other[0])))
    assert sorted(pairs) == list(itertools.permutations(range(4), 2))  # every ordered pair once


def test_the_plan_is_drawn_once_and_replayed_every_epoch():
    sampler = ClassPairTripletSampler(LABELS, 2, seed=5)
    first = list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == first
    assert list(ClassPairTripletSampler(LABELS, 2, seed=5)) == first
    assert list(ClassPairTripletSampler(LABELS, 2, seed=6)) != first


def test_ranks_take_disjoint_whole_batches_of_the_same_plan():
    plan = list(ClassPairTripletSampler(LABELS, 2, seed=3))
    shards = [list(ClassPairTripletSampler(LABELS, 2, seed=3, num_replicas=5, rank=r)) for r in range(5)]
    assert all(len(shard) == len(plan) // 5 for shard in shards)
    assert [batch for r in range(5) for batch in shards[r]] == [
        plan[i] for r in range(5) for i in range(r, len(plan) // 5 * 5, 5)
    ]


def test_len_equals_batches_yielded_on_every_rank_and_epoch():
    for world_size in (1, 2, 5):
        for rank in range(world_size):
            sampler = ClassPairTripletSampler(LABELS, 2, seed=3, num_replicas=world_size, rank=rank)
            for epoch in range(3):
                sampler.set_epoch(epoch)
                assert len(sampler) == len(list(sampler)) == 12 // world_size


def test_classes_smaller_than_2b_are_refused():
    with pytest.raises(DataError, match=r"2b=8 images per class, but classes \[1\]"):
        ClassPairTripletSampler(LABELS, 4)


def test_data_module_builds_the_chosen_sampler_with_b_triplets():
    module = Digits(protocol="closed_set", validation=[], sampler=ClassPairTriplets(triplets_per_pair=5))
    module.setup()
    loader = module.train_dataloader()
    assert isinstance(loader.batch_sampler, ClassPairTripletSampler)
    assert len(loader) == 90 and len(next(iter(loader))["label"]) == 15


def test_train_reference_protocol_searches_test_images_among_training_images():
    module = Digits(
        protocol="closed_set",
        test_gallery="training_images",
        validation=["test"],
        transforms=Transforms(augment=False),
    )
    module.setup()
    closed = Digits(protocol="closed_set", validation=[])
    closed.setup()
    evaluation = module.test_set
    assert module.val_sets["val"] is evaluation and "searched among the training images" in module.summary()
    assert int(evaluation.is_query.sum()) == len(closed.test_set)
    assert int(evaluation.is_gallery.sum()) == len(closed.train_set)
    assert bool((evaluation.is_query ^ evaluation.is_gallery).all())
    queries, references = evaluation.labels[evaluation.is_query], evaluation.labels[evaluation.is_gallery]
    assert torch.equal(queries, closed.test_set.class_ids) and torch.equal(
        references, closed.train_set.class_ids
    )
    first_reference = int(evaluation.is_query.sum())
    torch.testing.assert_close(
        evaluation[first_reference]["image"],
        closed.transform(train=False)(closed.train_set.source.load(int(closed.train_set.indices[0]))),
    )


def test_raw_pixels_give_unscaled_values_and_augment_false_keeps_images_fixed():
    module = Digits(
        protocol="closed_set", validation=[], transforms=Transforms(raw_pixels=True, augment=False)
    )
    module.setup()
    image = module.train_set[0]["image"]
    source = module.train_set.source.load(int(module.train_set.indices[0]))
    assert image.dtype == torch.float32 and float(image.max()) > 1
    torch.testing.assert_close(image, source.float())
    torch.testing.assert_close(module.train_set[0]["image"], image)


def triplets_of(batches: list[list[int]], b: int) -> list[tuple[int, int, int]]:
    """The (anchor, positive, negative) positions of batches laid out [a_1..a_b, p_1..p_b, n_1..n_b]."""
    return [(batch[i], batch[b + i], batch[2 * b + i]) for batch in batches for i in range(b)]


def test_shuffled_triplets_deal_the_fixed_triplets_into_new_mixed_batches_each_epoch():
    b = 3
    fixed = triplets_of(list(ClassPairTripletSampler(LABELS, b, seed=2)), b)
    sampler = ClassPairTripletSampler(LABELS, b, seed=2, shuffle_triplets=True)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 12
        triplets = triplets_of(batches, b)
        assert sorted(triplets) == sorted(fixed)  # the same triplets, each once
        for a, p, n in triplets:  # the layout still gives valid triplets
            assert LABELS[a] == LABELS[p] != LABELS[n]
        pairs_per_batch = [
            {(int(LABELS[a]), int(LABELS[n])) for a, _, n in triplets_of([batch], b)} for batch in batches
        ]
        assert max(len(pairs) for pairs in pairs_per_batch) > 1  # class pairs are mixed
        epochs.append(triplets)
    assert epochs[0] != epochs[1]


def test_data_module_builds_shuffled_class_pair_triplets():
    module = Digits(
        protocol="closed_set",
        validation=[],
        sampler=ClassPairTriplets(triplets_per_pair=5, shuffle=True),
    )
    module.setup()
    sampler = module.train_dataloader().batch_sampler
    assert isinstance(sampler, ClassPairTripletSampler) and sampler.shuffle_triplets
