"""Shared data for the metric tests: random clustered embeddings."""

import pytest
import torch


def make_clustered(
    seed: int, n_classes: int = 30, dim: int = 16, spread: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings around random class centres, 1–12 points per class (some classes are singletons)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 13, (n_classes,), generator=generator)
    labels = torch.repeat_interleave(torch.arange(n_classes), sizes)
    centres = torch.randn(n_classes, dim, generator=generator)
    embeddings = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    order = torch.randperm(len(labels), generator=generator)
    return embeddings[order], labels[order]


@pytest.fixture(name="make_clustered")
def make_clustered_fixture():
    """The ``make_clustered`` generator, for tests that need several draws."""
    return make_clustered


@pytest.fixture
def clustered() -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed draw of clustered embeddings and their labels."""
    return make_clustered(seed=0)
