"""The evaluation protocol: how classes are split between training and test, and what the test gallery is.

The two choices are the data module's ``protocol`` and ``test_gallery`` keys; :class:`Protocol` is the one
place that interprets them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_dml.data.base import ImageSource, RetrievalDataset
from lightning_dml.data.splits import check_class_list, check_disjoint_classes, hold_out_images
from lightning_dml.errors import DataError

#: ``zero_shot``: training and test classes disjoint (checked); ``closed_set``: the same classes, other
#: images.
ClassSplit = Literal["zero_shot", "closed_set"]
#: ``test_images``: the test set is searched within itself (leave-one-out, or its own query/gallery roles);
#: ``training_images``: the test images are queries searched among the training images (the G-DML paper's).
TestGallery = Literal["test_images", "training_images"]


@dataclass(frozen=True)
class Protocol:
    """How classes are split (``classes``) and what the test images are searched among (``test_gallery``).

    ``training_images`` needs the closed set: zero-shot test classes have no training image to find.
    """

    classes: ClassSplit = "zero_shot"
    test_gallery: TestGallery = "test_images"

    def __post_init__(self) -> None:
        if self.zero_shot and self.test_gallery == "training_images":
            raise DataError(
                "test_gallery: training_images searches the test images among the training images, but "
                "zero-shot test classes have none there; set protocol: closed_set or test_gallery: "
                "test_images"
            )

    def __str__(self) -> str:
        gallery = (
            ", test images searched among the training images" if self.test_gallery != "test_images" else ""
        )
        return f"{self.classes}{gallery}"

    @property
    def zero_shot(self) -> bool:
        """Whether training and test classes are disjoint."""
        return self.classes == "zero_shot"

    def split_pool(
        self, source: ImageSource, train_classes: Sequence[int], test_fraction: float, seed: int
    ) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Split one pool of images into training pool and test set.

        Zero-shot: the images of ``train_classes`` versus the rest; the list must name known classes, each
        once, some but not all. Closed set: ``test_fraction`` of each class's images (drawn by ``seed``)
        versus the rest.
        """
        if self.zero_shot:
            classes = torch.unique(source.labels).tolist()
            check_class_list("train_classes", train_classes, classes)
            if not 0 < len(train_classes) < len(classes):
                raise DataError(
                    f"zero-shot tests the classes not in train_classes, but train_classes picks "
                    f"{len(train_classes)} of the {len(classes)} classes; pick some but not all, or choose "
                    "protocol: closed_set"
                )
            is_train = torch.isin(source.labels, torch.as_tensor(list(train_classes), dtype=torch.long))
        else:
            generator = torch.Generator().manual_seed(seed)
            is_train = torch.ones(len(source), dtype=torch.bool)
            is_train[hold_out_images(source.labels, test_fraction, 1, generator)] = False
        everything = RetrievalDataset(source)
        return everything.select(is_train.nonzero().flatten()), everything.select(
            (~is_train).nonzero().flatten()
        )

    def check_validation(self, validation: Sequence[str]) -> None:
        """Refuse ``unseen`` validation (held-out training classes) unless zero-shot."""
        if "unseen" in validation and not self.zero_shot:
            raise DataError(
                f"validation: unseen holds out training classes, but protocol {self.classes} tests the "
                "training classes; use validation: [seen] or protocol: zero_shot"
            )

    def test_set(
        self, test: RetrievalDataset, train: RetrievalDataset, transform: Callable
    ) -> RetrievalDataset:
        """Return the test set as evaluated: ``test`` itself, or its images as queries among ``train``'s."""
        if self.test_gallery == "test_images":
            return test
        return queries_against_training_images(test, train, transform)

    def check_disjoint(self, train: RetrievalDataset, evaluation: dict[str, RetrievalDataset]) -> None:
        """Zero-shot: raise a DataError if the training set shares a class with a named evaluation set."""
        if self.zero_shot:
            for name, dataset in evaluation.items():
                check_disjoint_classes(train.class_ids, dataset.class_ids, name)

    @property
    def test_fix(self) -> str:
        """How to give a test set without anything to retrieve more to work with."""
        if self.zero_shot:
            return (
                "leave classes out of train_classes (or the dataset's training split), or choose protocol: "
                "closed_set"
            )
        return "raise test_fraction (or give the dataset's test split more images)"


class ConcatenatedImages(ImageSource):
    """The images of several dataset views one after the other, labelled by class id (their source's)."""

    def __init__(self, views: Sequence[RetrievalDataset]) -> None:
        self.views = list(views)
        self.labels = torch.cat([view.class_ids for view in self.views])
        self.starts = torch.tensor([0, *(len(view) for view in self.views)]).cumsum(0)

    def _locate(self, i: int) -> tuple[RetrievalDataset, int]:
        which = int(torch.searchsorted(self.starts, i, right=True)) - 1
        return self.views[which], i - int(self.starts[which])

    def load(self, i: int) -> object:
        """Return image ``i`` of the concatenation, untransformed."""
        view, position = self._locate(i)
        return view.source.load(int(view.indices[position]))

    def describe(self, i: int) -> str:
        """Return the name of image ``i`` in its own source."""
        view, position = self._locate(i)
        return view.describe(position)


def queries_against_training_images(
    test: RetrievalDataset, train: RetrievalDataset, transform: Callable
) -> RetrievalDataset:
    """One evaluation set: the test images as queries, the training images as gallery (labels = class ids)."""
    combined = ConcatenatedImages([test, train])
    is_query = torch.arange(len(combined)) < len(test)
    return RetrievalDataset(combined, None, transform, is_query=is_query, is_gallery=~is_query)
