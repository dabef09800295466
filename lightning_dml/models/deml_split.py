"""Backbones split in two for DeML: a trunk up to a mid-level map and the upper layers above it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lightning_dml.errors import ConfigError
from lightning_dml.models.backbones import TimmBackbone, TorchvisionBackbone


class SplitSmallCNN(nn.Module):
    """A small conv net for 8–32 px images, built to be split: blocks of conv3×3 → BatchNorm → ReLU, the first
    ``pooled_blocks`` each followed by a 2×2 max-pool; the first ``trunk_blocks`` form the trunk.

    With the defaults a 28-px image gives a 64×7×7 trunk map and a 128×7×7 upper map (SmallCNN pools down
    to 3×3, too coarse for object attention). ``forward`` pools globally: it also works as a plain backbone.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        trunk_blocks: int = 2,
        pooled_blocks: int = 2,
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1 or not 1 <= trunk_blocks < len(widths):
            raise ConfigError(
                f"SplitSmallCNN needs positive widths and 1 <= trunk_blocks < len(widths), got widths "
                f"{list(widths)} and trunk_blocks {trunk_blocks}."
            )
        blocks = []
        for index, (c_in, c_out) in enumerate(itertools.pairwise([in_channels, *widths])):
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            blocks.append(nn.Sequential(*layers, *([nn.MaxPool2d(2)] if index < pooled_blocks else [])))
        self.trunk = nn.Sequential(*blocks[:trunk_blocks])
        self.upper = nn.Sequential(*blocks[trunk_blocks:])
        self.trunk_channels: int = widths[trunk_blocks - 1]
        self.out_features: int = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (B, out_features) of images (B, C, H, W)."""
        return self.upper(self.trunk(images)).mean(dim=(-2, -1))


class GoogLeNetInput(nn.Module):
    """torchvision GoogLeNet's input re-normalisation (ImageNet mean/std → the (x − 0.5) / 0.5 its weights
    expect), as a module: torchvision keeps it in a private method of the whole model."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled
        self.register_buffer("scale", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) / 0.5)
        self.register_buffer("shift", (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) - 0.5) / 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The re-normalised images when enabled, else the images unchanged."""
        return images * self.scale + self.shift if self.enabled else images


@dataclass
class BackboneSplit:
    """A backbone's trunk (images → mid-level map) and upper layers (that map → final map), with channels."""

    trunk: nn.Module
    upper: nn.Module
    trunk_channels: int
    out_channels: int


_GOOGLENET_TRUNK = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b")
_GOOGLENET_TRUNK += ("maxpool3", "inception4a", "inception4b")
_GOOGLENET_UPPER = ("inception4c", "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b")


def split_backbone(backbone: nn.Module) -> BackboneSplit:
    """Split a backbone where DeML puts its channel attention.

    GoogLeNet (``TorchvisionBackbone("googlenet")``): trunk up to inception4b (512 channels, 14×14 at
    224 px), upper inception4c–5b (1024, 7×7). ResNets (``TimmBackbone`` or ``TorchvisionBackbone``): trunk
    up to layer3, upper layer4. ``SplitSmallCNN``: its own ``trunk`` / ``upper``. The parts share the
    backbone's modules.
    """
    if isinstance(backbone, SplitSmallCNN):
        return BackboneSplit(backbone.trunk, backbone.upper, backbone.trunk_channels, backbone.out_features)
    model = backbone.model if isinstance(backbone, TimmBackbone | TorchvisionBackbone) else None
    if model is not None and all(hasattr(model, name) for name in (*_GOOGLENET_TRUNK, *_GOOGLENET_UPPER)):
        trunk = [GoogLeNetInput(bool(getattr(model, "transform_input", False)))]
        trunk += [getattr(model, name) for name in _GOOGLENET_TRUNK]
        upper = [getattr(model, name) for name in _GOOGLENET_UPPER]
        trunk_channels = model.inception4c.branch1.conv.in_channels
        return BackboneSplit(
            nn.Sequential(*trunk), nn.Sequential(*upper), trunk_channels, backbone.out_features
        )
    if model is not None and all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        stem = [
            getattr(model, name)
            for name in ("conv1", "bn1", "relu", "act1", "maxpool")
            if hasattr(model, name)
        ]
        trunk = nn.Sequential(*stem, model.layer1, model.layer2, model.layer3)
        trunk_channels = _first_conv(model.layer4).in_channels
        return BackboneSplit(trunk, model.layer4, trunk_channels, backbone.out_features)
    raise ConfigError(
        f"DeML cannot split {type(backbone).__name__}; use TorchvisionBackbone googlenet, a ResNet "
        "(TimmBackbone or TorchvisionBackbone) or SplitSmallCNN."
    )


def _first_conv(module: nn.Module) -> nn.Conv2d:
    """The first ``Conv2d`` inside a module."""
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))
