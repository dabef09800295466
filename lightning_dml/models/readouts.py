"""Readouts: features of named layers of a network, pooled to one vector per image.

A readout takes the output of one layer (found by torchvision's ``create_feature_extractor``, which traces
the network with ``torch.fx``; layer names are module paths such as ``backbone.blocks.2``, listed by
``torchvision.models.feature_extraction.get_graph_node_names``) and pools it:

- ``avg``: global average pooling of a (B, C, H, W) map → (B, C).
- ``gem``: generalised mean pooling, ``mean(x.clamp(min=1e-6) ** p) ** (1 / p)`` per channel → (B, C).
- ``grid``: average pooling to a ``size × size`` grid, flattened channel-major → (B, C·size²).

A layer whose output is already (B, D) is taken as it is. Features wider than ``max_dim`` are multiplied
by a seeded Gaussian random projection (entries N(0, 1/max_dim), drawn on the CPU from ``seed``), which
keeps cosine similarities close (Johnson–Lindenstrauss) and is the same on every run and machine. The
projection matrix holds ``width × max_dim`` floats: for very wide layers prefer a coarser grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor

from lightning_dml.errors import ConfigError

Pooling = Literal["avg", "gem", "grid"]


@dataclass(frozen=True)
class Readout:
    """One readout: the output of ``layer`` pooled by ``pooling`` (module docstring).

    Args:
        layer: module path of the layer in the network, e.g. ``backbone.blocks.2``.
        pooling: ``avg`` (global average), ``gem`` (generalised mean) or ``grid`` (``size × size``,
            flattened).
        size: the grid's side for ``grid``.
        p: the exponent of ``gem``.
        max_dim: features wider than this are randomly projected to this many dimensions (``None``: never).
        seed: the random projection's seed.
    """

    layer: str
    pooling: Pooling = "avg"
    size: int = 7
    p: float = 3.0
    max_dim: int | None = 8192
    seed: int = 0


def pool(features: Tensor, readout: Readout) -> Tensor:
    """The pooled features (B, D) of one layer's output: a (B, C, H, W) map pooled as ``readout`` says, or
    a (B, D) output unchanged."""
    if features.ndim == 2:
        return features
    if features.ndim != 4:
        raise ConfigError(
            f"readout layer {readout.layer} gives shape {tuple(features.shape)}; readouts pool (B, C, H, W) "
            "maps or take (B, D) vectors, so pick a convolutional layer"
        )
    if readout.pooling == "gem":
        return F.adaptive_avg_pool2d(features.clamp(min=1e-6).pow(readout.p), 1).pow(1 / readout.p).flatten(1)
    side = readout.size if readout.pooling == "grid" else 1
    return F.adaptive_avg_pool2d(features, side).flatten(1)


def random_projection(in_dim: int, out_dim: int, seed: int) -> Tensor:
    """A (in_dim, out_dim) matrix of independent N(0, 1/out_dim) entries drawn on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_dim, out_dim, generator=generator) / math.sqrt(out_dim)


class LayerReadouts(nn.Module):
    """Maps images to ``{name: features (B, D)}`` for every readout of ``network`` (sharing its weights).

    ``network`` is traced from its ``forward`` (a ``RetrievalModule``'s is ``embed``). Projections are
    built on the first call, when the widths are known; run it once before tracing or exporting.
    """

    def __init__(self, network: nn.Module, readouts: Mapping[str, Readout]) -> None:
        super().__init__()
        if not readouts:
            raise ConfigError(
                "no readouts given; name at least one, e.g. {grid7: {layer: ..., pooling: grid}}"
            )
        for name in readouts:
            if not name or "/" in name or "." in name:
                raise ConfigError(f"readout name {name!r} must be non-empty without '/' or '.'")
        self.readouts = dict(readouts)
        layers = sorted({readout.layer for readout in self.readouts.values()})
        try:
            self.extractor = create_feature_extractor(
                network, return_nodes={layer: layer for layer in layers}
            )
        except ValueError as error:  # torchvision names the unknown node and lists the available ones
            raise ConfigError(f"readout layer not found in the network: {error}") from error
        except torch.fx.proxy.TraceError as error:
            raise ConfigError(
                f"readouts need a network torch.fx can trace ({error}); wrap the untraceable function with "
                "torch.fx.wrap, as SmallCNN does"
            ) from error

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Pooled (and, where wider than ``max_dim``, projected) features of each readout."""
        outputs = self.extractor(images)
        features = {}
        for name, readout in self.readouts.items():
            pooled = pool(outputs[readout.layer], readout)
            if readout.max_dim is not None and pooled.shape[1] > readout.max_dim:
                pooled = pooled @ self._projection(name, readout, pooled).to(pooled.dtype)
            features[name] = pooled
        return features

    def _projection(self, name: str, readout: Readout, pooled: Tensor) -> Tensor:
        """The readout's projection matrix, made on first use and kept as a (non-persistent) buffer."""
        key = f"projection_{name}"
        if not hasattr(self, key):
            matrix = random_projection(pooled.shape[1], readout.max_dim, readout.seed)
            self.register_buffer(key, matrix.to(pooled.device), persistent=False)
        return getattr(self, key)


class ReadoutEmbedder(nn.Module):
    """One readout of ``network`` as an images → embeddings (B, D) module, to predict, index or export
    with instead of the trained embedding."""

    def __init__(self, network: nn.Module, readout: Readout) -> None:
        super().__init__()
        self.readouts = LayerReadouts(network, {"readout": readout})

    def forward(self, images: Tensor) -> Tensor:
        """The readout's features (B, D) of images (B, C, H, W)."""
        return self.readouts(images)["readout"]
