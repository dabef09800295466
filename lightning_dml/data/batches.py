"""How training batches are drawn: the data module's ``sampler``, chosen by ``class_path``.

Each class holds only its parameters and builds the torch batch sampler (:mod:`lightning_dml.data.sampler`,
:mod:`lightning_dml.data.pair_triplets`) from the training labels and the run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_dml.data.pair_triplets import ClassPairTripletSampler
from lightning_dml.data.sampler import ClassBalancedBatchSampler, ShardedBatchSampler, ShuffledBatchSampler
from lightning_dml.errors import DataError


class TrainingBatches:
    """Base of the training batch choices: a subclass builds its batch sampler and says what it needs."""

    def batch_sampler(self, labels: Tensor, seed: int) -> ShardedBatchSampler:
        """Return the batch sampler over training ``labels``, its plans seeded by ``seed``."""
        raise NotImplementedError

    @property
    def images_per_class(self) -> int:
        """The fewest images each training class needs (the ``seen`` hold-out leaves at least these)."""
        raise NotImplementedError

    def check_classes(self, num_classes: int) -> None:
        """Raise a DataError naming the fix if batches cannot be formed from ``num_classes`` classes."""


@dataclass(frozen=True)
class ClassBalanced(TrainingBatches):
    """P classes × K images per batch, every image once per epoch, reshuffled each epoch.

    Args:
        classes_per_batch: P, distinct classes in each batch (at least 2, at most the training classes).
        samples_per_class: K, images of each class in a batch (batch size P·K).
    """

    classes_per_batch: int = 8
    samples_per_class: int = 4

    def batch_sampler(self, labels: Tensor, seed: int) -> ShardedBatchSampler:
        """Return a :class:`ClassBalancedBatchSampler` of P classes × K images."""
        return ClassBalancedBatchSampler(labels, self.classes_per_batch, self.samples_per_class, seed=seed)

    @property
    def images_per_class(self) -> int:
        """K: a class needs ``samples_per_class`` images to fill its place in a batch."""
        return self.samples_per_class

    def check_classes(self, num_classes: int) -> None:
        """Refuse P outside 2..``num_classes``: one class per batch has no negatives."""
        if not 2 <= self.classes_per_batch <= num_classes:
            raise DataError(
                f"classes_per_batch={self.classes_per_batch}, but class-balanced batches need 2 to "
                f"{num_classes} classes (the training set's); set classes_per_batch between 2 and "
                f"{num_classes}"
            )


@dataclass(frozen=True)
class RandomBatches(TrainingBatches):
    """Plain shuffled batches without regard to classes (the G-DML paper's student and baselines).

    Args:
        batch_size: images per batch; the incomplete last batch of an epoch is dropped.
    """

    batch_size: int = 32

    def batch_sampler(self, labels: Tensor, seed: int) -> ShardedBatchSampler:
        """Return a :class:`ShuffledBatchSampler` of ``batch_size`` images."""
        return ShuffledBatchSampler(len(labels), self.batch_size, seed=seed)

    @property
    def images_per_class(self) -> int:
        """One: any image can be drawn, but a class without images leaves training."""
        return 1


@dataclass(frozen=True)
class ClassPairTriplets(TrainingBatches):
    """GEMINI's fixed triplets: b per ordered class pair ``(i, j)``, anchors and positives of class i,
    negatives of class j, drawn once from the run seed (batch size 3b).

    Args:
        triplets_per_pair: b, the triplets of each ordered class pair, and the triplets in each batch.
        shuffle: ``False``: each batch is one class pair's triplets, the plan replayed every epoch (GEMINI);
            ``True``: the same fixed triplets dealt into new batches of b each epoch, mixing class pairs (the
            G-DML authors' Triplet-Network baseline).
    """

    triplets_per_pair: int
    shuffle: bool = False

    def batch_sampler(self, labels: Tensor, seed: int) -> ShardedBatchSampler:
        """Return a :class:`ClassPairTripletSampler` of b triplets per pair and batch."""
        return ClassPairTripletSampler(
            labels, self.triplets_per_pair, seed=seed, shuffle_triplets=self.shuffle
        )

    @property
    def images_per_class(self) -> int:
        """2b: the b anchors and b positives of a class are distinct images."""
        return 2 * self.triplets_per_pair
