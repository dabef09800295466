"""The G-DML losses: GEMINI's triplet plus stream-feature loss (teacher), the distance to targets (student).

All distances are plain (not squared) Euclidean distances on raw (not normalised) vectors.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import MeanReducer
from torch import nn

from lightning_dml.errors import DataError


class GeminiLoss(nn.Module):
    """``(1 − λ)·mean[‖f(a) − f(p)‖ − ‖f(a) − f(n)‖ + α]₊ + λ·mean‖h(a) − h(p)‖`` over the given triplets.

    ``f`` is the network output (``embeddings``), ``h`` the anchor's stream features (``features``);
    both means run over every triplet, the inactive ones included (PML's ``MeanReducer``).

    Args:
        margin: α.
        feature_weight: λ.
    """

    def __init__(self, margin: float = 3.0, feature_weight: float = 0.005) -> None:
        super().__init__()
        if not 0.0 <= feature_weight <= 1.0:
            raise DataError(f"feature_weight (λ) must lie in [0, 1], got {feature_weight}")
        self.margin = margin
        self.feature_weight = feature_weight
        self.triplet = TripletMarginLoss(
            margin=margin, distance=LpDistance(normalize_embeddings=False), reducer=MeanReducer()
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        features: torch.Tensor,
    ) -> torch.Tensor:
        """The loss of the triplets ``indices_tuple = (anchors, positives, negatives)`` (row positions)."""
        anchors, positives, _ = indices_tuple
        triplet = self.triplet(embeddings, labels, indices_tuple)
        feature = (features[anchors] - features[positives]).norm(dim=1).mean()
        return (1 - self.feature_weight) * triplet + self.feature_weight * feature


class TargetDistanceLoss(nn.Module):
    """Batch mean of ``‖y − t‖``: the guided student's plain Euclidean distance to the teacher's targets."""

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance between matching rows of ``embeddings`` and ``targets`` (B, D)."""
        if embeddings.shape != targets.shape:
            raise DataError(
                f"student embeddings {tuple(embeddings.shape)} and targets {tuple(targets.shape)} differ; "
                "set the student's embedding_size to the teacher's"
            )
        return (embeddings - targets).norm(dim=1).mean()
