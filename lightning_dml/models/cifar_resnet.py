"""CIFAR-style ResNet-18: a 3×3 stem without max-pool, so 28–32 px images keep their resolution early."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_dml.errors import ConfigError


class BasicBlock(nn.Module):
    """Two conv3×3 → BatchNorm layers with an identity (or 1×1 conv) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, CIFAR variant): images -> pooled features (B, out_features).

    Stem conv3×3 (stride 1) → BatchNorm → ReLU, no max-pool; four stages of ``blocks`` basic blocks with
    ``width``, 2·, 4·, 8·``width`` channels (stride 2 from the second stage); global average pooling.
    The defaults give ResNet-18 (``out_features`` 512); a smaller ``width`` fits CPU budgets.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if width < 1 or len(blocks) != 4 or min(blocks) < 1:
            raise ConfigError(
                f"CifarResNet needs width >= 1 and four positive block counts, got {width} and {list(blocks)}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, channels = [], width
        for stage, count in enumerate(blocks):
            out_channels = width * 2**stage
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.out_features: int = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (B, out_features) of images (B, C, H, W)."""
        return self.stages(self.stem(images)).mean(dim=(-2, -1))
