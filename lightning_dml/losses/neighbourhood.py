"""Neighbourhood preservation: keep the embedding's in-batch neighbours those of the features it is made
from, a regulariser against the head forgetting what transfers to unseen classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NeighbourhoodPreservation(nn.Module):
    """``weight`` × the mean over the batch of KL(p_i ‖ q_i), where p_i and q_i are softmax distributions over
    the other items j ≠ i of the batch: p_i of the cosine similarities of the reference features (centred on
    the batch mean, no gradient), q_i of the embeddings' cosine similarities, both at ``temperature``.

    Relational distillation (Park et al., CVPR 2019; Tung & Mori, ICCV 2019) from the network's own features:
    the reference is what the head reads (e.g. the last block's 7×7 grid), so the embedding keeps that
    readout's neighbourhoods while the metric loss separates the training classes.

    Args:
        weight: the term's weight beside the metric loss.
        temperature: softmax temperature of both similarity distributions.
    """

    def __init__(self, weight: float = 1.0, temperature: float = 0.1) -> None:
        super().__init__()
        self.weight = weight
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Return the weighted KL divergence of the embeddings' neighbour distributions from the reference's
        (embeddings (B, d), reference (B, ...) features of the same items)."""
        reference = reference.detach().flatten(1).float()
        reference = F.normalize(reference - reference.mean(dim=0), dim=1)
        embeddings = F.normalize(embeddings.float(), dim=1)
        itself = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
        target = (reference @ reference.T / self.temperature).masked_fill(itself, -torch.inf).softmax(dim=1)
        log_q = (embeddings @ embeddings.T / self.temperature).masked_fill(itself, -torch.inf)
        log_q = log_q.log_softmax(dim=1)
        kl = (target * (target.clamp_min(1e-30).log() - log_q)).masked_fill(itself, 0).sum(dim=1)
        return self.weight * kl.mean()
