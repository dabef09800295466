"""DeML's adversary constraints and auxiliary penalties, and the binomial deviance averaging it relies on."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_dml.errors import ConfigError
from lightning_dml.losses import BinomialDevianceLoss, DeMLAdversary
from lightning_dml.losses.deml import (
    AdversaryNetwork,
    activation_penalty,
    dann_schedule,
    gradient_reversal,
    hinge_adversary_loss,
    unit_row_norm_penalty,
)


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values), dim=0)


def test_hinge_by_hand() -> None:
    learners = torch.stack([unit(1.0, 0.0), unit(0.0, 1.0)]).unsqueeze(1)  # (J=2, B=1, d=2), 90° apart
    assert hinge_adversary_loss(learners).item() == pytest.approx((2 - math.sqrt(2)) ** 2 / 2)
    three = torch.stack([unit(1.0, 0.0), unit(0.0, 1.0), unit(-1.0, 0.0)]).unsqueeze(1)
    pairs = [(2 - math.sqrt(2)) ** 2, (2 - math.sqrt(2)) ** 2, 0.0]  # the opposite pair costs nothing
    assert hinge_adversary_loss(three).item() == pytest.approx(sum(pairs) / 2)


def test_hinge_falls_as_learners_separate() -> None:
    angles = torch.linspace(0, math.pi, 7)
    losses = [
        hinge_adversary_loss(
            torch.stack([unit(1.0, 0.0), unit(math.cos(a), math.sin(a))]).unsqueeze(1)
        ).item()
        for a in angles
    ]
    assert losses[0] == pytest.approx(2.0)  # identical learners: (2 - 0)² / 2
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    assert losses[-1] == pytest.approx(0.0, abs=1e-12)


def test_gradient_reversal_and_dann_schedule() -> None:
    x = torch.randn(3, requires_grad=True)
    y = gradient_reversal(x, 0.3)
    torch.testing.assert_close(y, x.detach())
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -0.3))
    assert dann_schedule(0.0) == 0.0
    assert dann_schedule(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert 0.9999 < dann_schedule(1.0) < 1.0


def test_grl_adversary_and_learners_move_in_opposite_directions() -> None:
    torch.manual_seed(0)
    network = AdversaryNetwork(embedding_size=8, hidden_size=16)
    embeddings = F.normalize(torch.randn(3, 5, 8), dim=-1).requires_grad_()
    frozen = copy.deepcopy(network)
    before = network(embeddings)
    before.backward()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter -= 0.05 * parameter.grad  # the adversary descends its loss
        after_adversary = network(embeddings)
        moved = embeddings - 0.05 * embeddings.grad  # so do the learners, but through the reversal
        after_learners = frozen(moved)
    assert after_adversary < before  # the adversary pulls an image's learners together
    assert after_learners > before  # the learners, reversed, push them apart


def test_adversary_variants() -> None:
    normalized = F.normalize(torch.randn(2, 3, 4, 8), dim=-1)  # (I, J, B, d)
    hinge = DeMLAdversary("hinge", embedding_size=8, weight=0.2)
    expected = 0.2 * (hinge_adversary_loss(normalized[0]) + hinge_adversary_loss(normalized[1]))
    torch.testing.assert_close(hinge(normalized), expected)
    assert DeMLAdversary("none")(normalized).item() == 0.0
    grl = DeMLAdversary("grl", embedding_size=8, weight=0.2)
    assert grl(normalized, strength=0.5).item() > 0
    assert len(list(grl.parameters())) == 2 and not list(hinge.parameters())
    with pytest.raises(ConfigError, match="Unknown DeML adversary"):
        DeMLAdversary("gan")


def test_unit_row_norm_penalty_by_hand() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # d = 2 rows of norm 1 and 2
    assert unit_row_norm_penalty(weight).item() == pytest.approx((0 + (4 - 1) ** 2) / 2)


def test_activation_penalty_by_hand() -> None:
    # The release's ActLoss on W·x: (1/B) Σ_b ‖W x_b‖² / d, gradient 2 (W x_b) / (B·d) per response.
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)  # d = 2
    pooled = torch.tensor([[1.0, 1.0], [2.0, 0.0]], requires_grad=True)  # B = 2: W x = (1, 2) and (2, 0)
    penalty = activation_penalty(weight, pooled)
    assert penalty.item() == pytest.approx((1 + 4 + 4 + 0) / (2 * 2))  # 2.25
    penalty.backward()
    # dL/dW = 2/(B·d) Σ_b (W x_b) x_bᵀ = ½ ([[1, 1], [2, 2]] + [[4, 0], [0, 0]])
    torch.testing.assert_close(weight.grad, torch.tensor([[2.5, 0.5], [1.0, 1.0]]))
    assert pooled.grad is None  # the features are detached (the release's propagate_down: 0)


def test_activation_penalty_matches_the_release_loop_in_float64() -> None:
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    pooled = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    w, x = weight.tolist(), pooled.tolist()
    d, channels, batch = len(w), len(x[0]), len(x)
    # act_loss.cpp Forward_cpu, one bottom: loss = Σ_n dot(y_n, y_n) / channels, divided by num.
    responses = [[sum(w[r][c] * x[b][c] for c in range(channels)) for r in range(d)] for b in range(batch)]
    expected = sum(sum(y * y for y in response) / d for response in responses) / batch
    # Backward_cpu: diff(y_n) = 2 y_n / (num · channels); the inner product passes it to W as Σ_n diff ⊗ x_n.
    gradient = [
        [sum(2 * responses[b][r] / (batch * d) * x[b][c] for b in range(batch)) for c in range(channels)]
        for r in range(d)
    ]
    penalty = activation_penalty(weight, pooled)
    assert penalty.item() == pytest.approx(expected, rel=1e-12)
    penalty.backward()
    torch.testing.assert_close(weight.grad, torch.tensor(gradient, dtype=torch.float64), rtol=1e-12, atol=0)


def test_binomial_deviance_averages_positive_and_negative_pairs_apart() -> None:
    embeddings = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    similarity = embeddings @ embeddings.t()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    positive = F.softplus(-2.0 * (similarity[same & off_diagonal] - 0.5)).mean()
    negative = F.softplus(2.0 * 35.0 * (similarity[~same] - 0.5)).mean()
    loss = BinomialDevianceLoss(alpha=2.0, beta=0.5, negative_cost=35.0)(embeddings, labels)
    torch.testing.assert_close(loss, positive + negative)
