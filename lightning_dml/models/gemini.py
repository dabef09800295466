"""GEMINI: one convolutional stream per training class and a shared head (the G-DML teacher)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_dml.errors import ConfigError, DataError


def gemini_stream(in_channels: int, padding: int) -> nn.Sequential:
    """conv 5×5 → 32, PReLU, max-pool 2, conv 5×5 → 64, PReLU, max-pool 2, flatten (no normalisation)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=padding),
        nn.PReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=padding),
        nn.PReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )


class GeminiNetwork(nn.Module):
    """``num_streams`` conv streams of the same shape with their own weights, and one shared head.

    ``forward(images, stream_ids)`` sends each image through the stream named by its id (its class during
    training), then the shared head Linear → 256, PReLU, Linear → 256, PReLU, Linear → ``embedding_size``.
    Stream features are 1024-d at 28 px and 1600-d at 32 px (``padding`` 0, as in the paper); ``padding``
    2 keeps the size through the convs, so tiny images (8 px digits) fit.
    """

    def __init__(
        self,
        num_streams: int,
        in_channels: int = 1,
        image_size: int = 28,
        embedding_size: int = 2,
        padding: int = 0,
    ) -> None:
        super().__init__()
        if num_streams < 1:
            raise ConfigError(f"GeminiNetwork needs at least one stream, got num_streams={num_streams}")
        self.streams = nn.ModuleList(gemini_stream(in_channels, padding) for _ in range(num_streams))
        with torch.no_grad():
            probe = torch.zeros(1, in_channels, image_size, image_size)
            try:
                self.feature_size: int = self.streams[0](probe).shape[1]
            except RuntimeError:
                raise ConfigError(
                    f"images of {image_size} px are too small for the GEMINI streams; set padding: 2"
                ) from None
        self.head = nn.Sequential(
            nn.Linear(self.feature_size, 256),
            nn.PReLU(),
            nn.Linear(256, 256),
            nn.PReLU(),
            nn.Linear(256, embedding_size),
        )
        self.embedding_size = embedding_size

    def stream_features(self, images: torch.Tensor, stream_ids: torch.Tensor) -> torch.Tensor:
        """Flattened features (B, feature_size): image ``b`` through stream ``stream_ids[b]``."""
        stream_ids = torch.as_tensor(stream_ids, device=images.device).long()
        if len(stream_ids) != len(images):
            raise DataError(f"{len(images)} images but {len(stream_ids)} stream ids; pass one per image")
        if len(stream_ids) and not 0 <= int(stream_ids.min()) <= int(stream_ids.max()) < len(self.streams):
            raise DataError(
                f"stream ids must lie in 0..{len(self.streams) - 1} (one stream per training class), "
                f"got {stream_ids.unique().tolist()}"
            )
        features = images.new_empty(len(images), self.feature_size)
        for stream in stream_ids.unique().tolist():  # only the streams present run (and get gradient)
            rows = (stream_ids == stream).nonzero().flatten()
            features[rows] = self.streams[stream](images[rows])
        return features

    def forward(self, images: torch.Tensor, stream_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the embeddings (B, embedding_size) and the stream features (B, feature_size)."""
        features = self.stream_features(images, stream_ids)
        return self.head(features), features
