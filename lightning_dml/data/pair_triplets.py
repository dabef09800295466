"""Class-pair triplet batches (GEMINI): each batch holds the b triplets of one ordered pair of classes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from lightning_dml.errors import DataError


class ClassPairTripletSampler(Sampler[list[int]]):
    """Yield one batch per ordered class pair ``(i, j)``, ``i != j``: ``[a_1..a_b, p_1..p_b, n_1..n_b]``.

    The b anchors and b positives are 2b distinct images of class i, the b negatives b distinct images of
    class j. The pairs are shuffled once and the whole plan is drawn once from ``seed``, then replayed in the
    same order every epoch (GEMINI's fixed triplet set). Under DDP rank ``r`` of ``W`` takes whole batches
    ``r, r + W, ...``, truncated so all ranks yield the same number (as ``ClassBalancedBatchSampler``);
    set ``Trainer(use_distributed_sampler=False)``.
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        triplets_per_batch: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        classes, counts = labels.unique(return_counts=True)
        if triplets_per_batch < 1:
            raise DataError(f"triplets_per_batch must be at least 1, got {triplets_per_batch}")
        if len(classes) < 2:
            raise DataError(f"class-pair triplets need at least 2 classes, the labels hold {len(classes)}")
        if int(counts.min()) < 2 * triplets_per_batch:
            small = classes[counts < 2 * triplets_per_batch].tolist()
            raise DataError(
                f"b={triplets_per_batch} triplets per batch need 2b={2 * triplets_per_batch} images per "
                f"class, but classes {small} have fewer; lower samples_per_class (b)"
            )
        generator = torch.Generator().manual_seed(seed)
        positions = [(labels == c).nonzero().flatten() for c in classes.tolist()]
        pairs = list(itertools.permutations(range(len(classes)), 2))
        batches = []
        for p in torch.randperm(len(pairs), generator=generator).tolist():
            i, j = pairs[p]
            same = positions[i][
                torch.randperm(len(positions[i]), generator=generator)[: 2 * triplets_per_batch]
            ]
            other = positions[j][torch.randperm(len(positions[j]), generator=generator)[:triplets_per_batch]]
            batches.append(torch.cat([same, other]))
        self.plan = torch.stack(batches)
        self.triplets_per_batch = triplets_per_batch
        self.num_replicas = num_replicas
        self.rank = rank

    @property
    def sampler(self) -> ClassPairTripletSampler:
        """This sampler itself, for Lightning's ``set_epoch`` call on ``batch_sampler.sampler``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: every epoch replays the same plan."""

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's batches as lists of dataset positions, in the fixed order."""
        for batch in self._rank_batches():
            yield batch.tolist()

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return len(self._rank_batches())

    def _rank_batches(self) -> Tensor:
        world_size, rank = world(self.num_replicas, self.rank)
        per_rank = len(self.plan) // world_size
        return self.plan[rank::world_size][:per_rank]


def world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(world size, rank)``: the given values, else ``torch.distributed``'s, else ``(1, 0)``."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not 0 <= rank < num_replicas:
        raise DataError(f"rank={rank} is outside num_replicas={num_replicas}; pass 0 <= rank < num_replicas")
    return num_replicas, rank


def split_triplets(batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row positions ``(anchors, positives, negatives)`` of a ``ClassPairTripletSampler`` batch of 3b."""
    if batch_size % 3:
        raise DataError(f"a class-pair triplet batch has 3b rows, got {batch_size}")
    return tuple(torch.arange(batch_size).view(3, -1))
