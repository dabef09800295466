"""``MetricLearning``: a backbone and an embedding head trained with any pytorch-metric-learning loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_dml.losses import NeighbourhoodPreservation
from lightning_dml.methods.base import RetrievalModule, gathered_across_ranks, lr_groups
from lightning_dml.models import EmbeddingHead


class MetricLearning(RetrievalModule):
    """Baseline deep metric learning: ``loss(head(backbone(x)), labels, miner(...))``.

    Args:
        backbone: feature extractor with an ``out_features`` attribute (``lightning_dml.models``).
        loss: a loss with pytorch-metric-learning's calling convention, e.g.
            ``pytorch_metric_learning.losses.MultiSimilarityLoss`` or
            ``lightning_dml.losses.BinomialDevianceLoss``.
            Its own parameters (proxies, a learnable margin) are trained with the rest.
        miner: optional pytorch-metric-learning miner whose tuples are handed to the loss.
        embedding_size: output dimension.
        hidden_size: set it for an MLP head instead of a linear one.
        normalize: L2-normalise the embeddings.
        backbone_lr: learning rate of the backbone (``None``: the optimizer's); lower for pretrained ones.
        loss_lr: learning rate of the loss's parameters (``None``: the optimizer's); proxies often want more.
        gather_across_ranks: under DDP, compute the miner and loss on the embeddings of every rank's batch
            (pytorch-metric-learning's distributed wrappers), so W processes × batch B see the pairs of one
            batch of W·B. Only the local embeddings carry gradient; the loss is scaled by W so that DDP's
            gradient average equals the gradient of the single-process W·B batch. Needs PML-style losses
            and miners. ``False``: each rank's loss sees its own batch only.
        regulariser: optional :class:`~lightning_dml.losses.NeighbourhoodPreservation`, added to the loss:
            the embeddings keep the in-batch neighbourhoods of the backbone's output (the features the head
            reads), computed on this rank's batch.
        **kwargs: optimizer, scheduler and memory-format options of :class:`RetrievalModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        loss: nn.Module,
        miner: nn.Module | None = None,
        embedding_size: int = 128,
        hidden_size: int | None = None,
        normalize: bool = True,
        backbone_lr: float | None = None,
        loss_lr: float | None = None,
        gather_across_ranks: bool = True,
        regulariser: NeighbourhoodPreservation | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.backbone = backbone
        self.head = EmbeddingHead(backbone.out_features, embedding_size, hidden_size, normalize)
        self.loss = loss
        self.miner = miner
        self.backbone_lr = backbone_lr
        self.loss_lr = loss_lr
        self.gather_across_ranks = gather_across_ranks
        self.regulariser = regulariser

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``head(backbone(images))``."""
        return self.head(self.backbone(images))

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Apply the miner (if any) and the loss to the batch's embeddings, plus the regulariser (if any)."""
        features = self.backbone(batch["image"])
        embeddings, labels = self.head(features), batch["label"]
        loss, miner = gathered_across_ranks(self.loss, self.miner, self.gather_across_ranks)
        tuples = miner(embeddings, labels) if miner is not None else None
        value = loss(embeddings, labels, tuples)
        return value if self.regulariser is None else value + self.regulariser(embeddings, features)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone, head and loss parameters, with their own learning rates where configured."""
        return lr_groups(
            (list(self.backbone.parameters()), self.backbone_lr),
            (list(self.head.parameters()), None),
            (list(self.loss.parameters()), self.loss_lr),
        )
