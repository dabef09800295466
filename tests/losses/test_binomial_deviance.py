import math

import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import MultiSimilarityMiner
from pytorch_metric_learning.reducers import SumReducer

from lightning_dml.errors import DataError
from lightning_dml.losses import BinomialDevianceLoss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def reference_loss(sim, pos_pairs, neg_pairs, alpha=2.0, beta=0.5, cost=25.0) -> float:
    """Independent reference: explicit loops over the listed (i, j) pairs of a similarity matrix."""
    pos = [softplus(-alpha * (sim[i][j] - beta)) for i, j in pos_pairs]
    neg = [softplus(alpha * cost * (sim[i][j] - beta)) for i, j in neg_pairs]
    return (sum(pos) / len(pos) if pos else 0.0) + (sum(neg) / len(neg) if neg else 0.0)


def cosine(a, b) -> torch.Tensor:
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def test_hand_computed_four_points():
    # unit vectors at 0°, 90°, 45°, 180°; classes {0, 1} and {2, 3}
    r = 1 / math.sqrt(2)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # positives: s(0,1) = 0, s(2,3) = -r; negatives: s(0,2) = r, s(0,3) = -1, s(1,2) = r, s(1,3) = 0
    pos = (softplus(-2 * (0 - 0.5)) + softplus(-2 * (-r - 0.5))) / 2
    neg = (2 * softplus(50 * (r - 0.5)) + softplus(50 * (-1 - 0.5)) + softplus(50 * (0 - 0.5))) / 4
    loss = BinomialDevianceLoss()(emb, labels)
    assert loss.item() == pytest.approx(pos + neg, rel=1e-6)


def test_matches_reference_on_random_batch():
    torch.manual_seed(0)
    emb, labels = torch.randn(12, 5), torch.arange(12) % 4
    sim = cosine(emb, emb).tolist()
    pairs = [(i, j) for i in range(12) for j in range(12) if i != j]
    pos = [(i, j) for i, j in pairs if labels[i] == labels[j]]
    neg = [(i, j) for i, j in pairs if labels[i] != labels[j]]
    loss = BinomialDevianceLoss(alpha=3.0, beta=0.4, negative_cost=35.0)(emb, labels)
    assert loss.item() == pytest.approx(reference_loss(sim, pos, neg, 3.0, 0.4, 35.0), rel=1e-5)


def test_many_easy_negatives_do_not_dilute_positive_term():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]] + [[-1.0, 0.0]] * 100)
    labels = torch.tensor([0, 0, *range(1, 101)])
    positive_term = softplus(-2 * (0 - 0.5))  # the pair (0, 1) at similarity 0
    loss_fn = BinomialDevianceLoss()
    for num_negatives in (1, 100):
        negatives = torch.arange(2, 2 + num_negatives)
        # both orders of the positive pair: PML returns zero for a tuple of single pairs
        indices = (torch.tensor([0, 1]), torch.tensor([1, 0]), torch.zeros_like(negatives), negatives)
        loss = loss_fn(emb, labels, indices_tuple=indices)
        assert loss.item() == pytest.approx(positive_term, rel=1e-6)


def test_pulling_positive_pair_closer_lowers_loss():
    angle = torch.tensor(1.0, requires_grad=True)
    second = torch.stack([torch.cos(angle), torch.sin(angle)])
    emb = torch.stack([torch.tensor([1.0, 0.0]), second, torch.tensor([-1.0, 0.0])])
    loss = BinomialDevianceLoss()(emb, torch.tensor([0, 0, 1]))
    loss.backward()
    assert angle.grad > 0  # a smaller angle to its positive lowers the loss


def test_with_multi_similarity_miner():
    torch.manual_seed(1)
    emb, labels = torch.randn(16, 8), torch.arange(16) % 4
    miner = MultiSimilarityMiner(epsilon=0.1)
    a1, p, a2, n = miner(emb, labels)
    assert len(a1) > 0 and len(a2) > 0
    loss = BinomialDevianceLoss()(emb, labels, indices_tuple=(a1, p, a2, n))
    sim = cosine(emb, emb).tolist()
    expected = reference_loss(
        sim, zip(a1.tolist(), p.tolist(), strict=True), zip(a2.tolist(), n.tolist(), strict=True)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_with_ref_emb():
    torch.manual_seed(2)
    emb, labels = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    ref, ref_labels = torch.randn(7, 6), torch.tensor([0, 0, 1, 1, 3, 3, 2])
    loss = BinomialDevianceLoss()(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    pairs = [(i, j) for i in range(4) for j in range(7)]
    pos = [(i, j) for i, j in pairs if labels[i] == ref_labels[j]]
    neg = [(i, j) for i, j in pairs if labels[i] != ref_labels[j]]
    assert loss.item() == pytest.approx(reference_loss(cosine(emb, ref).tolist(), pos, neg), rel=1e-5)


def test_pml_reducer_is_applied_per_side():
    emb, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0, 0, 1])
    loss = BinomialDevianceLoss(reducer=SumReducer())(emb, labels)
    # ordered pairs: positives (0,1), (1,0) at s = 0; negatives (0,2), (2,0) at s = -1, (1,2), (2,1) at s = 0
    expected = 2 * softplus(1.0) + 2 * softplus(-75.0) + 2 * softplus(-25.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_no_positive_pairs_gives_finite_loss_and_gradient():
    emb = torch.randn(5, 3, requires_grad=True)
    loss = BinomialDevianceLoss()(emb, torch.arange(5))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(emb.grad).all()


def test_extreme_scale_stays_finite():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = BinomialDevianceLoss(alpha=100.0, negative_cost=1000.0)(emb, torch.tensor([0, 1, 1]))
    loss.backward()
    # positives (1, 2) at s = -1 cost 100 * 1.5; negatives: (0, 1) at s = 1 costs 100 * 1000 * 0.5, (0, 2) ~0
    assert loss.item() == pytest.approx(150 + 50_000 / 2, rel=1e-4)
    assert torch.isfinite(emb.grad).all()


def test_rejects_a_distance_that_is_not_a_similarity():
    with pytest.raises(DataError, match="needs a similarity"):
        BinomialDevianceLoss(distance=LpDistance())
