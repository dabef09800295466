"""DeML's network (Chen & Deng, CVPR 2019): I attention streams × J channel-attention learners.

Stream 1 sees the image, stream i + 1 a zoomed crop chosen by stream i's object attention
(:func:`random_walk_attention`, :func:`attention_crop_boxes`, :func:`crop_and_resize`). Each stream is a
separate copy of a backbone split into trunk and upper layers (:func:`split_backbone`); each of its J learners
modulates the trunk map with its own :class:`ChannelAttention` before the shared upper layers and a shared
bias-free embedding layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_dml.errors import ConfigError
from lightning_dml.models.deml_attention import attention_crop_boxes, crop_and_resize, random_walk_attention
from lightning_dml.models.deml_split import BackboneSplit, GoogLeNetInput, SplitSmallCNN, split_backbone
from lightning_dml.models.heads import without_autocast

__all__ = [
    "BackboneSplit",
    "ChannelAttention",
    "DeMLNetwork",
    "DeMLOutput",
    "DeMLStream",
    "GoogLeNetInput",
    "SplitSmallCNN",
    "attention_crop_boxes",
    "caffe_xavier_",
    "crop_and_resize",
    "random_walk_attention",
    "split_backbone",
]

# Leaves of a torch.fx trace (readouts trace DeML): their checks and crops depend on tensor values.
torch.fx.wrap("random_walk_attention")
torch.fx.wrap("attention_crop_boxes")
torch.fx.wrap("crop_and_resize")


def caffe_xavier_(layer: nn.Conv2d | nn.Linear) -> None:
    """Initialise a layer as the release's new layers are: Caffe's ``xavier`` weight filler with its default
    ``variance_norm: FAN_IN`` (uniform on ±sqrt(3 / fan_in), fan_in = in_channels × kernel area, so the
    variance is 1 / fan_in) and a ``constant`` 0 bias filler."""
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="linear")  # gain 1: bound sqrt(3 / fan_in)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class ChannelAttention(nn.Module):
    """A learner's channel attention: ``x · sigmoid(conv1×1(ReLU(conv1×1(x))))``, bottleneck C → hidden → C.

    Applied at every position, so the mask is C×H×W (not a pooled squeeze-and-excitation vector). Both
    convolutions start as the release's ``CAM`` layers: :func:`caffe_xavier_` weights, zero biases.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        for layer in (self.layers[0], self.layers[2]):
            caffe_xavier_(layer)

    def mask(self, features: torch.Tensor) -> torch.Tensor:
        """The attention mask (B, C, H, W), values in (0, 1), of a map (B, C, H, W)."""
        return torch.sigmoid(self.layers(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The map (B, C, H, W) multiplied by its mask."""
        return features * self.mask(features)


class DeMLStream(nn.Module):
    """One attention stream: trunk → J channel attentions → shared upper layers → pooled → embeddings.

    With ``channel_attention`` the J learners share one bias-free embedding layer (the release); without it
    the upper layers run once and each learner has its own embedding layer (shared ones would make the
    learners identical). Embedding layers start with :func:`caffe_xavier_` weights, as the release's.
    """

    def __init__(
        self, split: BackboneSplit, learners: int, embedding_size: int, channel_attention: bool, hidden: int
    ) -> None:
        super().__init__()
        self.trunk, self.upper = split.trunk, split.upper
        self.attentions = nn.ModuleList(
            ChannelAttention(split.trunk_channels, hidden)
            for _ in range(learners if channel_attention else 0)
        )
        self.embeddings = nn.ModuleList(
            nn.Linear(split.out_channels, embedding_size, bias=False)
            for _ in range(1 if channel_attention else learners)
        )
        for layer in self.embeddings:
            caffe_xavier_(layer)
        self.learners = learners

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings (J, B, d), pooled features (J, B, C) and learner 1's upper map (B, C, h, w)."""
        batch = images.shape[0]
        trunk = self.trunk(images)
        if self.attentions:  # the J modulated maps share one pass through the upper layers
            trunk = torch.cat([attention(trunk) for attention in self.attentions])
        upper = self.upper(trunk)
        # Pooling and embeddings in float32 under mixed precision too: they feed the losses and the metrics.
        with without_autocast(self):
            upper_full = upper.to(self.embeddings[0].weight.dtype)
            pooled = upper_full.mean(dim=(-2, -1)).view(-1, batch, upper.shape[1])
            if self.attentions:
                embeddings = self.embeddings[0](pooled)
            else:
                embeddings = torch.stack([layer(pooled[0]) for layer in self.embeddings])
                pooled = pooled.expand(self.learners, -1, -1)
        return embeddings, pooled, upper[:batch]


@dataclass
class DeMLOutput:
    """What :class:`DeMLNetwork` computes for a batch of B images, I streams and J learners.

    ``embeddings`` (I, J, B, d) before normalisation; ``pooled`` (I, J, B, C) pooled upper features;
    ``inputs`` (I, B, C, H, W) each stream's input; ``maps`` (I, B, h, w) object-attention maps and ``boxes``
    (I, B, 4) the crop each map selects in its stream's input (``None`` when not computed).
    """

    embeddings: torch.Tensor
    pooled: torch.Tensor
    inputs: torch.Tensor
    maps: torch.Tensor | None
    boxes: torch.Tensor | None

    def normalized(self) -> torch.Tensor:
        """The L2-normalised learner embeddings (I, J, B, d)."""
        return F.normalize(self.embeddings, dim=-1)

    def concatenated(self) -> torch.Tensor:
        """The test embedding (B, I·J·d): normalised learner embeddings, stream-then-learner order."""
        normalized = self.normalized()
        return normalized.permute(2, 0, 1, 3).flatten(1)


class DeMLNetwork(nn.Module):
    """I streams × J learners of a splittable backbone, with object and channel attention switches.

    Args:
        backbone: a backbone :func:`split_backbone` accepts; each stream gets its own copy (same initial
            weights).
        streams: I.
        learners: J per stream.
        embedding_size: d_l, each learner's embedding size (release: 56, so 3 × 3 × 56 = 504).
        object_attention: crop stream i + 1's input by stream i's attention (else all streams see the image).
        channel_attention: give each learner a :class:`ChannelAttention` on the trunk map.
        attention_hidden: bottleneck width of the channel attention (release: 64).
        attention_steps: power iterations of the random walk (release: 10).
        attention_sigma: spatial σ of the graph (``None``: 0.15 × map side).
        stationary_attention: use the walk's exact equilibrium instead of ``attention_steps`` iterations.
    """

    def __init__(
        self,
        backbone: nn.Module,
        streams: int = 3,
        learners: int = 3,
        embedding_size: int = 56,
        object_attention: bool = True,
        channel_attention: bool = True,
        attention_hidden: int = 64,
        attention_steps: int = 10,
        attention_sigma: float | None = None,
        stationary_attention: bool = False,
    ) -> None:
        super().__init__()
        if streams < 1 or learners < 1 or embedding_size < 1:
            raise ConfigError(
                f"DeML needs streams, learners and embedding_size >= 1, got {streams}, {learners}, "
                f"{embedding_size}."
            )
        self.streams = nn.ModuleList(
            DeMLStream(
                split_backbone(copy.deepcopy(backbone)),
                learners,
                embedding_size,
                channel_attention,
                attention_hidden,
            )
            for _ in range(streams)
        )
        #: The backbone's ``pretrained_cfg`` (its normalisation), kept as the split drops the backbone object.
        self.pretrained_cfg: dict[str, Any] | None = getattr(backbone, "pretrained_cfg", None)
        self.learners = learners
        self.embedding_size = embedding_size
        self.object_attention = object_attention
        self.attention_steps = attention_steps
        self.attention_sigma = attention_sigma
        self.stationary_attention = stationary_attention

    def attention(
        self, upper: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention maps (B, h, w) of an upper map and the crop boxes (B, 4) they select (no gradient)."""
        with torch.no_grad(), without_autocast(self):  # power iterations in the weights' precision
            upper = upper.detach().to(next(self.parameters()).dtype)
            maps = random_walk_attention(
                upper, self.attention_sigma, self.attention_steps, self.stationary_attention
            )
            return maps, attention_crop_boxes(maps, image_size)

    def forward(self, images: torch.Tensor, with_attention: bool = False) -> DeMLOutput:
        """Run every stream; attention maps are computed where a crop needs them, or for every stream when
        ``with_attention`` (for display)."""
        image_size = (images.shape[-2], images.shape[-1])
        embeddings, pooled, inputs, maps, boxes = [], [], [], [], []
        stream_input = images
        for index, stream in enumerate(self.streams):
            stream_embeddings, stream_pooled, upper = stream(stream_input)
            embeddings.append(stream_embeddings)
            pooled.append(stream_pooled)
            inputs.append(stream_input.detach())
            needs_crop = self.object_attention and index + 1 < len(self.streams)
            if needs_crop or with_attention:
                stream_maps, stream_boxes = self.attention(upper, image_size)
                maps.append(stream_maps)
                boxes.append(stream_boxes)
            if needs_crop:
                stream_input = crop_and_resize(stream_input, stream_boxes)
            # Without object attention every stream sees the image itself.
        return DeMLOutput(
            torch.stack(embeddings),
            torch.stack(pooled),
            torch.stack(inputs),
            torch.stack(maps) if with_attention else None,
            torch.stack(boxes) if with_attention else None,
        )
