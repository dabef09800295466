"""DeML's decoupling terms: the adversary constraint between learners and the release's auxiliary penalties.

The metric loss itself is :class:`lightning_dml.losses.BinomialDevianceLoss` (``negative_cost=35``).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import nn

from lightning_dml.errors import ConfigError

AdversaryKind = Literal["hinge", "grl", "none"]


def hinge_adversary_loss(normalized: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Sum over learner pairs j < k of ``(1 / 2B) Σ_b max(0, margin − ‖ê_j,b − ê_k,b‖)²``.

    ``normalized`` is (J, B, d), one stream's L2-normalised learner embeddings; an image's learners are
    pushed apart (unit vectors are at most 2 apart, so the release's margin 2 is never inactive). This is the
    release's adversary constraint: Caffe's ``ContrastiveLoss`` (``legacy_version: false``) on each pair of
    an image's normalised learner embeddings, every pair labelled dissimilar.
    """
    batch = normalized.shape[1]
    total = normalized.new_zeros(())
    for j, k in itertools.combinations(range(normalized.shape[0]), 2):
        distances = (normalized[j] - normalized[k]).norm(dim=1)
        total = total + (margin - distances).clamp_min(0).square().sum() / (2 * batch)
    return total


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by −strength."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def gradient_reversal(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Return ``x`` unchanged; gradients flowing back through it are multiplied by ``−strength`` (Ganin &
    Lempitsky 2015)."""
    return _ReverseGradient.apply(x, strength)


def dann_schedule(progress: float) -> float:
    """DANN's reversal strength ``2 / (1 + exp(−10 p)) − 1`` at training progress ``p`` in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class AdversaryNetwork(nn.Module):
    """A reconstruction of the adversary network the paper describes, which the release does not contain (it
    trains with :func:`hinge_adversary_loss` and ships only a gradient-reversal layer): a small bias-free MLP
    with unit-norm output, shared by all learners, whose loss is the mean squared distance between the
    outputs of an image's learner pairs. The architecture and loss are our choice.

    The adversary minimises that loss (it tries to map an image's learners to the same point); the learners
    see it through a gradient-reversal layer and so maximise it, becoming distinguishable.
    """

    def __init__(self, embedding_size: int, hidden_size: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embedding_size, hidden_size, bias=False),
            nn.ReLU(),
            nn.Linear(hidden_size, embedding_size, bias=False),
        )

    def forward(self, normalized: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """Adversary loss of one stream's normalised learner embeddings (J, B, d), reversal ``strength``."""
        mapped = nn.functional.normalize(self.layers(gradient_reversal(normalized, strength)), dim=-1)
        pairs = list(itertools.combinations(range(normalized.shape[0]), 2))
        if not pairs:
            return normalized.new_zeros(())
        return torch.stack([(mapped[j] - mapped[k]).square().sum(dim=1).mean() for j, k in pairs]).mean()


class DeMLAdversary(nn.Module):
    """The adversary constraint of DeML, summed over streams and weighted by ``weight`` (per learner pair).

    ``hinge`` (the release's constraint): :func:`hinge_adversary_loss` per stream, weight 0.2 per pair.
    ``grl`` (a reconstruction, not in the release): :class:`AdversaryNetwork` through gradient reversal of
    strength ``strength`` (the caller follows :func:`dann_schedule`, as the release's unused
    ``GradientsReverse`` layer does), weight per pair. ``none``: zero.
    """

    def __init__(
        self,
        kind: AdversaryKind = "hinge",
        embedding_size: int = 56,
        weight: float = 0.2,
        hidden_size: int = 128,
    ) -> None:
        super().__init__()
        if kind not in ("hinge", "grl", "none"):
            raise ConfigError(f"Unknown DeML adversary {kind!r}; use hinge, grl or none.")
        self.kind = kind
        self.weight = weight
        self.network = AdversaryNetwork(embedding_size, hidden_size) if kind == "grl" else None

    def forward(self, normalized: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """The constraint for normalised embeddings (I, J, B, d) of I streams × J learners."""
        if self.kind == "none":
            return normalized.new_zeros(())
        if self.kind == "hinge":
            return self.weight * sum(hinge_adversary_loss(stream) for stream in normalized)
        pairs = normalized.shape[1] * (normalized.shape[1] - 1) / 2  # the network's loss averages over pairs
        return self.weight * pairs * sum(self.network(stream, strength) for stream in normalized)


def activation_penalty(weight: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """The release's activation penalty on an embedding layer: ``(1 / B) Σ_b ‖W · sg(x_b)‖² / d``.

    ``weight`` (d, C) is the bias-free embedding layer, ``pooled`` (B, C) the pooled features it maps (learner
    1's). As in the release (``ActLoss`` in ``act_loss.cpp`` on an inner product with ``propagate_down: 0``)
    the features are detached, so only ``W`` is penalised (a data-dependent weight decay); its gradient is
    ``(2 / (B·d)) Σ_b (W x_b) x_bᵀ``.
    """
    responses = pooled.detach() @ weight.t()
    return responses.square().sum() / (len(pooled) * weight.shape[0])


def unit_row_norm_penalty(weight: torch.Tensor) -> torch.Tensor:
    """The release's penalty keeping each row of an embedding layer (d, C) near unit norm:
    ``(1 / d) Σ_r (‖w_r‖² − 1)²``."""
    return (weight.square().sum(dim=1) - 1).square().sum() / weight.shape[0]
