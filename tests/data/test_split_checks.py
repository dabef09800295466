"""``setup`` refuses, in one line naming the option and the fix, a split whose numbers could not be trusted:
unknown or repeated classes, a protocol side without classes, empty or trivial evaluation sets, a validation
choice the protocol cannot offer, and (for ``fit``) a training set that cannot form batches with negatives."""

import pytest

from lightning_dml.data import ClassBalanced, ClassPairTriplets, Digits, RandomBatches, RetrievalDataset
from lightning_dml.errors import DataError

UNSEEN_IN_CLOSED_SET = (
    r"^validation: unseen holds out training classes, but protocol {} tests the training classes; "
    r"use validation: \[seen\] or protocol: zero_shot$"
)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"train_classes": list(range(10))},
            r"^zero-shot tests the classes not in train_classes, but train_classes picks 10 of the 10 "
            r"classes; pick some but not all, or choose protocol: closed_set$",
        ),
        ({"train_classes": []}, r"train_classes picks 0 of the 10 classes; pick some but not all"),
        (
            {"train_classes": [0, 1, 42, 99]},
            r"^train_classes names unknown classes 42, 99; the valid classes are 0–9$",
        ),
        ({"train_classes": [0, 1, 1, 2]}, r"^train_classes lists 1 more than once; list each class once$"),
        (
            {"train_classes": list(range(9))},
            r"^the test set holds only class 9, so every retrieval is right; leave classes out of "
            r"train_classes",
        ),
        (
            {"protocol": "closed_set", "validation": [], "test_fraction": 0.0},
            r"^the test set is empty; raise test_fraction",
        ),
        (  # one test image of each digit: leave-one-out finds nothing
            {"protocol": "closed_set", "validation": [], "test_fraction": 0.006},
            r"^no query of the test set has another image of its class to find .*; raise test_fraction",
        ),
        (
            {"validation": ["seen"], "val_images": 0.0},
            r"^val \(validation: seen\) is empty; raise val_images",
        ),
        (
            {"validation": ["seen", "test"], "val_images": 0.006},
            r"^no query of val_seen \(validation: seen\) has another image .*; raise val_images",
        ),
        (
            {"validation": ["unseen"], "val_classes": 4},
            r"^holding out 4 of 5 training classes leaves 4 for validation and 1 for training; both need at "
            r"least 2 \(change val_classes\)$",
        ),
        ({"protocol": "closed_set", "validation": ["unseen"]}, UNSEEN_IN_CLOSED_SET.format("closed_set")),
        (
            {"protocol": "closed_set", "test_gallery": "training_images", "validation": ["seen", "unseen"]},
            UNSEEN_IN_CLOSED_SET.format("closed_set"),
        ),
    ],
)
def test_setup_refuses_a_split_whose_numbers_mean_nothing(options, message):
    with pytest.raises(DataError, match=message) as error:
        Digits(**options).setup()
    assert "\n" not in str(error.value)


class UnmatchedQueries(Digits):
    """Digits whose test queries (digits 5 and 6) have no gallery image of their class (7, 8, 9)."""

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        pool, test = super().build()
        is_query = test.class_ids < 7
        return pool, RetrievalDataset(test.source, test.indices, is_query=is_query, is_gallery=~is_query)


def test_setup_refuses_queries_without_a_gallery_image_of_their_class():
    with pytest.raises(DataError, match=r"^no query of the test set has another image of its class to find"):
        UnmatchedQueries(validation=["test"]).setup()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"train_classes": [3], "sampler": ClassBalanced(classes_per_batch=1)},
            r"^the training set holds 1 class; metric learning needs at least 2: train on more classes "
            r"\(train_classes, val_classes\)$",
        ),
        (
            {"train_classes": [3], "sampler": ClassPairTriplets(triplets_per_pair=4)},
            r"^the training set holds 1 class;",
        ),
        (
            {"sampler": ClassBalanced(classes_per_batch=1)},
            r"^classes_per_batch=1, but class-balanced batches need 2 to 5 classes \(the training set's\); "
            r"set classes_per_batch between 2 and 5$",
        ),
        (
            {"sampler": ClassBalanced(classes_per_batch=6)},
            r"^classes_per_batch=6, but class-balanced batches need 2 to 5 classes",
        ),
    ],
)
def test_fit_refuses_a_training_set_without_negatives_in_its_batches(options, message):
    module = Digits(validation=["test"], **options)
    module.setup("validate")  # evaluating alone works
    with pytest.raises(DataError, match=message):
        module.setup("fit")


def test_a_training_images_gallery_needs_the_closed_set():
    with pytest.raises(DataError, match=r"^test_gallery: training_images .*; set protocol: closed_set or"):
        Digits(test_gallery="training_images")


@pytest.mark.parametrize(
    ("sampler", "kept"),
    [
        (ClassBalanced(samples_per_class=30), 30),
        (ClassPairTriplets(triplets_per_pair=20), 40),
        (RandomBatches(), 1),
    ],
)
def test_the_seen_hold_out_leaves_each_class_the_images_its_sampler_needs(sampler, kept):
    module = Digits(validation=["seen"], val_images=1.0, sampler=sampler)
    module.setup()
    assert module.train_set.class_ids.bincount()[:5].tolist() == [kept] * 5
