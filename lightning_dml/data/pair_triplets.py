"""Class-pair triplet batches (GEMINI): each batch holds the b triplets of one ordered pair of classes."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_dml.data.sampler import ShardedBatchSampler, epoch_generator
from lightning_dml.errors import DataError


class ClassPairTripletSampler(ShardedBatchSampler):
    """Yield one batch per ordered class pair ``(i, j)``, ``i != j``: ``[a_1..a_b, p_1..p_b, n_1..n_b]``.

    The b anchors and b positives are 2b distinct images of class i, the b negatives b distinct images of
    class j. The pairs are shuffled once and the whole plan is drawn once from ``seed``, then replayed in the
    same order every epoch (GEMINI's fixed triplet set); ranks share it out as :class:`ShardedBatchSampler`
    says. With ``shuffle_triplets`` the same fixed triplets are instead dealt into new batches of b each
    epoch, mixing class pairs (the G-DML authors' Triplet-Network baseline: a shuffled loader over the fixed
    triplet set); the rows keep the ``[anchors, positives, negatives]`` layout.
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        triplets_per_batch: int,
        seed: int = 0,
        shuffle_triplets: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_replicas, rank)
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
                f"class, but classes {small} have fewer; lower triplets_per_pair (b)"
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
        self.num_batches = len(self.plan)
        self.triplets_per_batch = triplets_per_batch
        self.seed = seed
        self.shuffle_triplets = shuffle_triplets

    def epoch_plan(self) -> Tensor:
        """The epoch's ``(num_pairs, 3b)`` positions: the fixed plan, or its triplets dealt anew."""
        if not self.shuffle_triplets:
            return self.plan
        b = self.triplets_per_batch
        triplets = self.plan.view(-1, 3, b).transpose(1, 2).reshape(-1, 3)  # (num_pairs * b, 3)
        order = torch.randperm(len(triplets), generator=epoch_generator(self.seed, self.epoch))
        return triplets[order].view(-1, b, 3).transpose(1, 2).reshape(-1, 3 * b)
