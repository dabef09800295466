"""scikit-learn's bundled handwritten digits: 1,797 greyscale 8×8 images, 10 classes, no download."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from lightning_dml.data.base import RetrievalDataset, TensorImages
from lightning_dml.data.datamodule import RetrievalDataModule
from lightning_dml.data.transforms import Preprocessing


class Digits(RetrievalDataModule):
    """scikit-learn digits as a retrieval benchmark.

    Zero-shot (default): ``train_classes`` (digits 0–4) for training, the other digits for testing.
    Closed set: all ten digits in both, with ``test_fraction`` of each digit's images held out for testing.
    """

    num_channels = 1
    #: augmentation: small random rotations, shifts and scalings (no flips: they change digits).
    default_preprocessing = Preprocessing(
        image_size=8,
        mean=(0.305,),
        std=(0.376,),
        augmentation=(v2.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1)),),
    )

    def __init__(
        self, train_classes: Sequence[int] = (0, 1, 2, 3, 4), test_fraction: float = 0.3, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.train_classes = list(train_classes)
        self.test_fraction = test_fraction

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Load the digits (grey levels 0–16 scaled to 0–255) and split them by the protocol."""
        from sklearn.datasets import load_digits  # deferred for start-up time

        pixels, labels = load_digits(return_X_y=True)
        images = torch.as_tensor(pixels * 255 / 16).round().to(torch.uint8).reshape(-1, 1, 8, 8)
        return self.split_pool(TensorImages(images, labels), self.train_classes, self.test_fraction)
