"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read through ``torchvision.datasets`` (official files)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets
from torchvision.datasets import VisionDataset
from torchvision.transforms import v2

from lightning_dml.data.base import RetrievalDataset, TensorImages
from lightning_dml.data.datamodule import RetrievalDataModule
from lightning_dml.data.splits import first_half_of_classes, positions_of_classes
from lightning_dml.data.transforms import Preprocessing
from lightning_dml.errors import DataError


def as_nchw_uint8(data: Any) -> torch.Tensor:
    """Return torchvision's ``.data`` as ``(N, C, H, W)``: ``(N, H, W)`` gains a channel, NHWC moves it."""
    images = torch.as_tensor(data)
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)


def expected_files(dataset_class: type[VisionDataset], root: str) -> tuple[Path, list[str]]:
    """Return the folder where torchvision looks for ``dataset_class`` and the files it needs there."""
    if issubclass(dataset_class, datasets.MNIST):
        names = [os.path.splitext(os.path.basename(name))[0] for name, _ in dataset_class.resources]
        return Path(root, dataset_class.__name__, "raw"), names
    names = [name for name, _ in [*dataset_class.train_list, *dataset_class.test_list]]
    return Path(root, dataset_class.base_folder), [*names, dataset_class.meta["filename"]]


class TorchvisionDataModule(RetrievalDataModule):
    """A torchvision classification dataset as a retrieval benchmark.

    Zero-shot (default): the lower half of the class ids, taken from the official training file, for
    training; the upper half, taken from the official test file, for testing. Closed set: all classes,
    training file vs test file.

    Args:
        root: folder that holds the dataset in torchvision's layout (e.g. ``root/FashionMNIST/raw``).
        download: let torchvision download the files into ``root`` when they are missing.
        **kwargs: the :class:`RetrievalDataModule` arguments.
    """

    dataset_class: type[VisionDataset]

    def __init__(self, root: str = "data", download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.download = download

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Load the training and test files once each and split them by the protocol."""
        train, test = self.load(train=True), self.load(train=False)
        if not self.protocol.zero_shot:
            return RetrievalDataset(train), RetrievalDataset(test)
        train_classes = first_half_of_classes(train.labels)
        return (
            RetrievalDataset(train, positions_of_classes(train.labels, train_classes)),
            RetrievalDataset(test, (~torch.isin(test.labels, train_classes)).nonzero().flatten()),
        )

    def load(self, train: bool) -> TensorImages:
        """Read the official training (or test) file into memory; a missing file raises a DataError."""
        try:
            dataset = self.dataset_class(self.root, train=train, download=self.download)
        except (RuntimeError, OSError) as error:
            raise DataError(self.not_found_message(error)) from None
        return TensorImages(as_nchw_uint8(dataset.data), dataset.targets)

    def not_found_message(self, error: Exception) -> str:
        """Describe why torchvision could not load the data: the folder, the missing files and the fix."""
        name = self.dataset_class.__name__
        folder, files = expected_files(self.dataset_class, self.root)
        missing = [file for file in files if not (folder / file).is_file()]
        if missing and not self.download:
            return (
                f"{name} not found: {folder} lacks {', '.join(missing)}; set download: true, or set root to "
                f"the folder that contains {folder.relative_to(self.root)}"
            )
        return f"torchvision could not load {name} from {folder}: {error} (check those files or the network)"


class MNIST(TorchvisionDataModule):
    """MNIST handwritten digits: 70,000 greyscale 28×28 images, 10 classes (zero-shot: 0–4 vs 5–9)."""

    dataset_class = datasets.MNIST
    num_channels = 1
    #: augmentation: small shifts and rotations; no flips, which would turn some digits into others.
    default_preprocessing = Preprocessing(
        image_size=28,
        mean=(0.1307,),
        std=(0.3081,),
        augmentation=(v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),),
    )


class FashionMNIST(TorchvisionDataModule):
    """Fashion-MNIST: 70,000 greyscale 28×28 clothing images, 10 classes (zero-shot: 0–4 vs 5–9)."""

    dataset_class = datasets.FashionMNIST
    num_channels = 1
    #: augmentation: small random crops (padding 2) and horizontal flips: clothes look alike mirrored.
    default_preprocessing = Preprocessing(
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        augmentation=(v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()),
    )


class CIFAR10(TorchvisionDataModule):
    """CIFAR-10: 60,000 colour 32×32 images, 10 classes (zero-shot: 0–4 vs 5–9)."""

    dataset_class = datasets.CIFAR10
    num_channels = 3
    #: augmentation: the usual CIFAR one, random crop with padding 4 and horizontal flip.
    default_preprocessing = Preprocessing(
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        augmentation=(v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()),
    )


class CIFAR100(CIFAR10):
    """CIFAR-100: 60,000 colour 32×32 images, 100 classes (zero-shot: 0–49 vs 50–99)."""

    dataset_class = datasets.CIFAR100
    default_preprocessing = replace(
        CIFAR10.default_preprocessing, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)
    )
