"""Triplets given by batch layout: the rows of a class-pair triplet batch are ``[anchors, positives,
negatives]``, so the triplets are known from positions, not mined."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_dml.errors import DataError


def split_triplets(batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row positions ``(anchors, positives, negatives)`` of a class-pair triplet batch of 3b rows."""
    if batch_size % 3:
        raise DataError(f"a class-pair triplet batch has 3b rows, got {batch_size}")
    return tuple(torch.arange(batch_size).view(3, -1))


class BatchTriplets(nn.Module):
    """A miner in pytorch-metric-learning's convention that returns the batch's own triplets by position:
    row ``i`` of the first third, row ``i`` of the second, row ``i`` of the last.

    For the data module's ``ClassPairTriplets`` sampler; with a PML triplet loss it trains on exactly the
    planned triplets, as the G-DML authors' Triplet-Network does. The batch must be one rank's own (set
    ``gather_across_ranks: false`` under DDP, since a gathered batch is several such layouts in a row).
    """

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(anchors, positives, negatives)`` row positions of the batch, on the embeddings' device, after
        checking that every anchor shares its positive's label and not its negative's."""
        anchors, positives, negatives = (rows.to(embeddings.device) for rows in split_triplets(len(labels)))
        labels = labels.to(embeddings.device)
        same, other = labels[anchors] == labels[positives], labels[anchors] != labels[negatives]
        if not bool((same & other).all()):
            raise DataError(
                "BatchTriplets needs batches laid out as [anchors, positives, negatives]; set data "
                "sampler: lightning_dml.data.ClassPairTriplets"
            )
        return anchors, positives, negatives
