"""GeminiLoss and TargetDistanceLoss on hand-computed cases and against torch's triplet loss."""

import pytest
import torch

from lightning_dml.errors import DataError
from lightning_dml.losses import GeminiLoss, TargetDistanceLoss


def test_gemini_loss_on_a_hand_computed_case():
    # two triplets: (a, p, n) = rows (0, 1, 2) and (3, 4, 5)
    embeddings = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 0.0], [1.0, 0.0], [0.0, 10.0]])
    features = torch.tensor([[0.0, 0.0], [0.0, 2.0], [9.0, 9.0], [1.0, 1.0], [4.0, 5.0], [7.0, 7.0]])
    triplets = (torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([2, 5]))
    labels = torch.tensor([0, 0, 1, 0, 0, 1])
    loss = GeminiLoss(margin=3.0, feature_weight=0.25)(embeddings, labels, triplets, features)
    # d(a, p) = 5 and 1, d(a, n) = 10 and 10: [5 - 10 + 3]+ = [1 - 10 + 3]+ = 0;
    # stream features ‖h(a) − h(p)‖ = 2 and 5: mean 3.5
    assert loss.item() == pytest.approx(0.75 * 0.0 + 0.25 * 3.5)
    loss = GeminiLoss(margin=7.0, feature_weight=0.25)(embeddings, labels, triplets, features)
    # [5 - 10 + 7]+ = 2, [1 - 10 + 7]+ = 0: mean 1 over both triplets (inactive ones count)
    assert loss.item() == pytest.approx(0.75 * 1.0 + 0.25 * 3.5)


def test_triplet_term_matches_torch_triplet_margin_loss():
    torch.manual_seed(0)
    embeddings, features = torch.randn(12, 2) * 3, torch.randn(12, 5)
    triplets = tuple(torch.arange(12).view(3, 4))
    labels = torch.tensor([0] * 8 + [1] * 4)
    ours = GeminiLoss(margin=3.0, feature_weight=0.0)(embeddings, labels, triplets, features)
    a, p, n = (embeddings[t] for t in triplets)
    reference = torch.nn.TripletMarginLoss(margin=3.0, p=2, eps=0.0)(a, p, n)
    torch.testing.assert_close(ours, reference)


def test_target_distance_is_the_mean_plain_euclidean_distance():
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    targets = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert TargetDistanceLoss()(embeddings, targets).item() == pytest.approx(2.5)
    with pytest.raises(DataError, match="embedding_size"):
        TargetDistanceLoss()(embeddings, torch.zeros(2, 3))
