"""Embedding heads: backbone features -> (optionally L2-normalised) embeddings."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_dml.errors import ConfigError


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
        embeddings = self.layers(features)
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings


class EmbeddingNetwork(nn.Module):
    """Backbone followed by a head: images (B, C, H, W) -> embeddings (B, ``embedding_size``).

    The head must expose ``embedding_size``; when both expose them, the backbone's ``out_features`` must
    equal the head's ``in_features``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        if not hasattr(head, "embedding_size"):
            raise ConfigError(
                f"Head {type(head).__name__} has no embedding_size attribute; use EmbeddingHead."
            )
        out_features = getattr(backbone, "out_features", None)
        in_features = getattr(head, "in_features", None)
        if None not in (out_features, in_features) and out_features != in_features:
            raise ConfigError(
                f"Backbone {type(backbone).__name__} gives {out_features} features but the head expects "
                f"{in_features}; set the head's in_features to {out_features}."
            )
        self.backbone = backbone
        self.head = head
        self.embedding_size: int = head.embedding_size

    @classmethod
    def from_backbone(
        cls,
        backbone: nn.Module,
        embedding_size: int = 128,
        hidden_size: int | None = None,
        normalize: bool = True,
        dropout: float = 0.0,
    ) -> "EmbeddingNetwork":
        """The backbone with an ``EmbeddingHead`` sized to its ``out_features``."""
        head = EmbeddingHead(backbone.out_features, embedding_size, hidden_size, normalize, dropout)
        return cls(backbone, head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, embedding_size) of images (B, C, H, W)."""
        return self.head(self.backbone(images))
