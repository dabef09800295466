"""Wide embeddings (a readout's thousands of dims): close pairs re-scored by whole rows stay exact."""

import pytest
import torch

from lightning_dml.metrics import ranking as ranking_module
from lightning_dml.metrics import retrieval_metrics
from tests.reference import brute_force_metrics, float64_scores


def wide_features(n: int = 240, dim: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features (like ReLU maps) sharing one strong direction: every cosine is close to its
    neighbours', so the float32 screen leaves most listed pairs to float64."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = torch.rand(4, dim, generator=generator)
    features = (5 + centres[labels] + torch.rand(n, dim, generator=generator)).relu()
    return features, labels


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_wide_embeddings_match_the_float64_reference_through_whole_row_scores(monkeypatch, metric):
    features, labels = wide_features()
    calls = []
    dense = ranking_module._dense_pair_scores
    monkeypatch.setattr(
        ranking_module, "_dense_pair_scores", lambda *args: calls.append(len(args[1])) or dense(*args)
    )
    found = retrieval_metrics(features, labels, metric=metric)
    assert calls, "the close pairs were expected to fill their rows"
    expected = brute_force_metrics(features.double().numpy(), labels.numpy(), metric=metric)
    assert found == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_whole_row_scores_equal_float64_pair_scores(metric):
    features, _ = wide_features(n=50, dim=700)
    generator = torch.Generator().manual_seed(1)
    rows, columns = (
        torch.randint(0, 50, (400,), generator=generator),
        torch.randint(0, 50, (400,), generator=generator),
    )
    scores = ranking_module._dense_pair_scores(features, rows, features, columns, metric)
    expected = float64_scores(features, features, metric)[rows, columns]
    scale = float(features.double().square().sum(1).max())  # euclidean cancellation is relative to |g|²
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12 * scale)
