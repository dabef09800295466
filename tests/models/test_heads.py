import pytest
import torch
import torch.nn.functional as F

from lightning_dml.errors import ConfigError
from lightning_dml.models import EmbeddingHead


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


def test_linear_head_hand_computed() -> None:
    head = EmbeddingHead(in_features=2, embedding_size=2)
    with torch.no_grad():
        head.layers[0].weight.copy_(torch.eye(2))
        head.layers[0].bias.zero_()
    torch.testing.assert_close(head(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))


def test_head_normalisation_gives_unit_norms_and_can_be_switched_off() -> None:
    features = torch.randn(8, 16) * 10
    normalized = EmbeddingHead(16, embedding_size=4)(features)
    assert normalized.shape == (8, 4)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(8))
    raw = EmbeddingHead(16, embedding_size=4, normalize=False)(features)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(8))


def test_mlp_head_is_linear_bn_relu_linear() -> None:
    head = EmbeddingHead(16, embedding_size=4, hidden_size=32).eval()
    first, batch_norm, _, last = head.layers
    with torch.no_grad():
        batch_norm.running_mean.uniform_(-1, 1)
        batch_norm.running_var.uniform_(0.5, 2)
    features = torch.randn(8, 16)

    hidden = (first(features) - batch_norm.running_mean) / torch.sqrt(batch_norm.running_var + batch_norm.eps)
    hidden = hidden * batch_norm.weight + batch_norm.bias
    expected = F.normalize(last(hidden.clamp(min=0)), dim=1)
    torch.testing.assert_close(head(features), expected)
    assert (first.out_features, last.in_features, last.out_features) == (32, 32, 4)


def test_head_dropout_only_in_training() -> None:
    head = EmbeddingHead(16, embedding_size=4, dropout=0.5, normalize=False)
    features = torch.randn(8, 16)
    head.eval()
    torch.testing.assert_close(head(features), head.layers[1](features))
    head.train()
    assert not torch.allclose(head(features), head.layers[1](features))
    with pytest.raises(ConfigError, match="dropout"):
        EmbeddingHead(16, dropout=1.0)
