"""Image sources and retrieval dataset views: the data layer's building blocks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_dml.errors import DataError

# What PIL raises on a file it cannot open or decode (UnidentifiedImageError and truncation are OSErrors).
UNDECODABLE = (OSError, SyntaxError, ValueError)


def check_files_exist(paths: Sequence[str | Path], origins: Sequence[str], advice: str) -> None:
    """Raise a DataError naming the origin of the first missing file (and how many more), then ``advice``.

    ``origins[i]`` says where ``paths[i]`` was listed (file and line); each distinct path is checked once.
    """
    present = {path for path in set(paths) if os.path.isfile(path)}
    missing = [i for i, path in enumerate(paths) if path not in present]
    if missing:
        first = missing[0]
        others = f" ({len(missing) - 1} more rows too)" if len(missing) > 1 else ""
        raise DataError(f"{origins[first]}: image file not found: {paths[first]}{others}; {advice}")


class ImageSource:
    """A fixed list of images with integer class ids; ``load(i)`` returns image ``i`` untransformed."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Any:
        """Return image ``i`` as a PIL image or a ``(C, H, W)`` uint8 tensor."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Return a human-readable name for image ``i`` (its path where it has one)."""
        return f"#{i}"


class TensorImages(ImageSource):
    """Images held in memory as a ``(N, C, H, W)`` uint8 tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> None:
        if images.ndim != 4:
            raise DataError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def load(self, i: int) -> torch.Tensor:
        """Return image ``i`` as a ``(C, H, W)`` uint8 tensor."""
        return self.images[i]


class ImageFiles(ImageSource):
    """Images read from files on disk, decoded with PIL and converted to ``mode`` (RGB by default)."""

    def __init__(self, paths: Sequence[str | Path], labels: torch.Tensor | Sequence[int], mode: str = "RGB"):
        self.paths = [Path(p) for p in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mode = mode
        if len(self.paths) != len(self.labels):
            raise DataError(f"{len(self.paths)} image paths but {len(self.labels)} labels")

    def load(self, i: int) -> Image.Image:
        """Return image ``i`` as a PIL image; a missing or corrupt file raises a DataError naming it."""
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                return image.convert(self.mode)
        except FileNotFoundError:
            raise DataError(
                f"image file not found: {path} (check the dataset root and its list files)"
            ) from None
        except UNDECODABLE as error:
            raise DataError(
                f"cannot decode image {path}: {error}; repair or remove it (verify_images: true lists every "
                "such file at setup), or set skip_corrupt: true to leave such images out"
            ) from None

    def describe(self, i: int) -> str:
        """Return the path of image ``i``."""
        return str(self.paths[i])


class RetrievalDataset(Dataset):
    """A view of an ``ImageSource``: selected images, a transform and optional query/gallery roles.

    Items are ``{"image", "label", "index"}`` where ``index`` is the item's position in this view (used to
    drop the duplicates a distributed sampler pads with). With ``contiguous_labels`` the class ids are
    renumbered ``0..C-1`` in sorted order, as classification-style losses (proxies) need. ``is_query`` and
    ``is_gallery`` (boolean, one per item) mark the roles for query-vs-gallery evaluation; without them the
    view is evaluated leave-one-out.
    """

    def __init__(
        self,
        source: ImageSource,
        indices: torch.Tensor | Sequence[int] | None = None,
        transform: Callable | None = None,
        contiguous_labels: bool = False,
        is_query: torch.Tensor | None = None,
        is_gallery: torch.Tensor | None = None,
    ) -> None:
        self.source = source
        self.indices = (
            torch.arange(len(source)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        )
        self.transform = transform
        self.class_ids = source.labels[self.indices]
        self.labels = (
            torch.unique(self.class_ids, return_inverse=True)[1] if contiguous_labels else self.class_ids
        )
        self.is_query = is_query
        self.is_gallery = is_gallery

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.source.load(int(self.indices[i]))
        if self.transform is not None:
            image = self.transform(image)
        item = {"image": image, "label": int(self.labels[i]), "index": i}
        if self.is_query is not None:
            item["is_query"] = bool(self.is_query[i])
            item["is_gallery"] = bool(self.is_gallery[i])
        return item

    @property
    def num_classes(self) -> int:
        """Number of distinct classes in this view."""
        return len(torch.unique(self.class_ids))

    def describe(self, i: int) -> str:
        """Return a human-readable name (path) for item ``i``."""
        return self.source.describe(int(self.indices[i]))

    def select(
        self, positions: torch.Tensor, transform: Callable | None = None, **kwargs: Any
    ) -> RetrievalDataset:
        """Return a new view of the items at ``positions`` of this one, with its own transform."""
        return RetrievalDataset(self.source, self.indices[positions], transform, **kwargs)
