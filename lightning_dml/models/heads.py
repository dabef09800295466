"""Embedding heads: backbone features -> (optionally L2-normalised) embeddings."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_dml.errors import ConfigError


def without_autocast(module: nn.Module) -> torch.autocast:
    """A context that turns mixed-precision autocast off on ``module``'s device (read from its parameters,
    so that torch.fx can trace through it)."""
    return torch.autocast(next(module.parameters()).device.type, enabled=False)


class EmbeddingHead(nn.Module):
    """Projects features (B, in_features) to embeddings (B, embedding_size).

    Dropout on the features (when ``dropout > 0``), then a Linear layer, or with ``hidden_size`` an MLP
    Linear → BatchNorm → ReLU → Linear; with ``normalize`` the result is L2-normalised to unit length.
    """

    def __init__(
        self,
        in_features: int,
        embedding_size: int = 128,
        hidden_size: int | None = None,
        normalize: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"EmbeddingHead dropout must lie in [0, 1), got {dropout}.")
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden_size is None:
            layers.append(nn.Linear(in_features, embedding_size))
        else:
            layers += [
                nn.Linear(in_features, hidden_size),
                nn.BatchNorm1d(hidden_size),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_size, embedding_size),
            ]
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.embedding_size = embedding_size
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, embedding_size) of features (B, in_features); unit L2 norm if ``normalize``."""
        # In float32 under mixed precision too: the embeddings feed the loss and the exact metrics.
        with without_autocast(self):
            embeddings = self.layers(features.to(self.layers[-1].weight.dtype))
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings
