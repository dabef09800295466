"""Images in class folders (``root/<class_name>/<image>``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_dml.data.base import ImageFiles, RetrievalDataset
from lightning_dml.data.image_files import ImageFileDataModule
from lightning_dml.data.splits import check_class_list, listed
from lightning_dml.data.transforms import IMAGE_FILES
from lightning_dml.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scan_class_folders(root: Path, extensions: Sequence[str]) -> tuple[list[str], list[Path], list[int]]:
    """Return the class names (sorted), every image path under ``root/<class_name>/`` and its class id."""
    layout = f"expected {root}/<class_name>/<image>.jpg"
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}; {layout} (set root to that folder)")
    suffixes = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    images = [
        sorted(p for p in f.rglob("*") if p.is_file() and p.suffix.lower() in suffixes) for f in folders
    ]
    if not any(images):
        raise DataError(f"no images ({', '.join(sorted(suffixes))}) found in {root}; {layout}")
    empty = [folder.name for folder, files in zip(folders, images, strict=True) if not files]
    if empty:
        raise DataError(f"class folders without images in {root}: {listed(empty)}; add images or remove them")
    labels = [label for label, files in enumerate(images) for _ in files]
    return [folder.name for folder in folders], [path for files in images for path in files], labels


class ImageFolder(ImageFileDataModule):
    """Images in one folder per class, ``root/<class_name>/<image>``; classes sorted by name get ids 0..C-1.

    Zero-shot (default): the classes named in ``train_classes`` (default: the first half of the sorted names)
    for training, the others for testing. Closed set: all classes, ``test_fraction`` of each class's images
    held out for testing. Preprocessing (``transforms`` changes it): ImageNet-style, random resized crops of
    224 and flips for training, the shorter side resized to 224 and the centre crop for evaluation, ImageNet
    normalisation.

    Args:
        root: the folder holding one sub-folder per class.
        train_classes: class folder names used for training in the zero-shot protocol.
        extensions: file name endings counted as images (case-insensitive).
        test_fraction: fraction of each class's images held out for testing in the closed-set protocol.
        **kwargs: the :class:`ImageFileDataModule` arguments (``verify_images``, ``skip_corrupt``) and
            the :class:`RetrievalDataModule` ones.
    """

    num_channels = 3
    default_preprocessing = IMAGE_FILES

    def __init__(
        self,
        root: str,
        train_classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        test_fraction: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.train_classes = None if train_classes is None else list(train_classes)
        self.extensions = list(extensions)
        self.test_fraction = test_fraction

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Scan the class folders and split the images by the protocol."""
        names, paths, labels = scan_class_folders(Path(self.root), self.extensions)
        train_classes = self.train_class_ids(names) if self.protocol.zero_shot else []
        return self.split_pool(ImageFiles(paths, labels), train_classes, self.test_fraction)

    def train_class_ids(self, names: list[str]) -> list[int]:
        """Return the zero-shot training class ids; unknown or repeated names raise a DataError."""
        chosen = names[: len(names) // 2] if self.train_classes is None else self.train_classes
        check_class_list(f"train_classes (folders in {self.root})", chosen, names)
        return [names.index(name) for name in sorted(chosen)]
