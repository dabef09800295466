"""What the four zero-shot benchmarks share: annotations, published counts, box crops, preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from lightning_dml.data.base import ImageFiles, RetrievalDataset, check_files_exist
from lightning_dml.data.image_files import ImageFileDataModule
from lightning_dml.data.transforms import IMAGE_FILES
from lightning_dml.errors import DataError

Row = tuple[int, list[str]]


def read_rows(path: Path, fields: int, skip: int = 0, layout: str = "") -> list[Row]:
    """Return ``(line number, fields)`` of each non-empty whitespace-separated line after ``skip`` lines.

    A missing file or a line without ``fields`` fields raises a DataError naming it.
    """
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; expected {layout or 'the published layout'}")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [(number, line.split()) for number, line in enumerate(lines, 1) if number > skip and line.strip()]
    for number, values in rows:
        if len(values) != fields:
            raise DataError(
                f"{path} line {number}: expected {fields} fields, found {len(values)}; fix the line"
            )
    if not rows:
        raise DataError(f"{path} lists no images; restore the file from the dataset archive")
    return rows


def parse_int(path: Path, line: int, name: str, value: str) -> int:
    """Return ``value`` as an integer; anything else raises a DataError naming the file and line."""
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path} line {line}: {name} {value!r} is not an integer; fix the line") from None


def check_range(where: str, name: str, value: int, low: int, high: int) -> None:
    """Raise a DataError naming ``where`` (file and line) when ``value`` lies outside ``low..high``."""
    if not low <= value <= high:
        raise DataError(
            f"{where}: {name} {value} is outside {low}–{high}, the range of this file in the "
            "published dataset; restore the original annotation file"
        )


class BenchmarkImages(ImageFiles):
    """Image files with optional bounding boxes ``(x1, y1, x2, y2)`` (pixels, end exclusive) to crop to.

    ``metadata`` holds extra per-image integer tensors (for example SOP's super-classes).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: torch.Tensor | Sequence[int],
        boxes: torch.Tensor | None = None,
        metadata: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(paths, labels)
        self.boxes = boxes
        self.metadata = metadata or {}

    def load(self, i: int) -> Image.Image:
        """Return image ``i`` (cropped to its box if there are boxes) as an RGB PIL image."""
        image = super().load(i)
        if self.boxes is None:
            return image
        x1, y1, x2, y2 = self.boxes[i].tolist()
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, image.width), min(y2, image.height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise DataError(
                f"the bounding box of {self.paths[i]} lies outside its {image.width}×{image.height} pixels; "
                "fix the box file or set crop_boxes: false"
            )
        return image.crop((round(x1), round(y1), round(x2), round(y2)))


@dataclass
class Annotations:
    """One row per image as read from a benchmark's files: path, class id, split part and its origin.

    ``parts`` are ``train`` / ``test`` (or ``train`` / ``query`` / ``gallery``); ``origins`` name the
    annotation line of each image for error messages. Paths are strings: ``pathlib`` would cost seconds on
    SOP's 120,053 rows.
    """

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] | None = None
    metadata: dict[str, list[int]] = field(default_factory=dict)


class BenchmarkDataModule(ImageFileDataModule):
    """A published zero-shot benchmark read from its on-disk layout, its split checked against the paper's.

    Subclasses set ``dataset_name``, ``layout`` (the expected tree, shown when the root is wrong),
    ``where_to_get``, ``published`` ((part, images, classes or ``None``) per part) and ``split_note``, and
    implement :meth:`read`. Preprocessing, the field's (``transforms`` changes it): training resizes the
    shorter side to 256, takes a random resized crop of 224 and flips; evaluation resizes to 256 and takes the
    centre crop; ImageNet normalisation, which the CLI replaces by the backbone's ``pretrained_cfg`` mean and
    std (``transforms.image_size: 227`` for GoogLeNet-era recipes).

    Args:
        root: the dataset folder (or its parent).
        allow_partial: accept a copy whose counts differ from the published dataset (logged as partial).
        **kwargs: the :class:`ImageFileDataModule` arguments (``verify_images``, ``skip_corrupt``) and
            the :class:`RetrievalDataModule` ones.
    """

    dataset_name: str
    layout: str
    where_to_get: str
    published: tuple[tuple[str, int, int | None], ...]
    split_note: str
    default_preprocessing = replace(IMAGE_FILES, resize=256)

    def __init__(self, root: str, allow_partial: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.protocol.zero_shot:
            raise DataError(
                f"{self.dataset_name} defines only the zero-shot split; set protocol: zero_shot, or list "
                "another split in a CSV for ImageCSV"
            )
        self.root = root
        self.allow_partial = allow_partial
        self.count_report = ""

    def find_root(self, marker: str, folder: str) -> Path:
        """Return ``root`` or ``root/folder``, whichever holds ``marker``, else raise a DataError."""
        for candidate in (Path(self.root), Path(self.root) / folder):
            if (candidate / marker).exists():
                return candidate
        raise DataError(
            f"{self.dataset_name}: {marker} not found in {self.root} or {Path(self.root) / folder}; "
            f"expected the tree {self.layout} (set root to the folder holding it; {self.where_to_get})"
        )

    def read(self) -> Annotations:
        """Parse the annotation files under ``root``; bad input raises a DataError naming file and line."""
        raise NotImplementedError

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Read the annotations, check images and counts, and split them into training pool and test set."""
        annotations = self.read()
        check_files_exist(  # SOP lists some files twice: each is checked once
            annotations.paths,
            annotations.origins,
            "the copy is incomplete: extract the image archive again",
        )
        self.check_counts(annotations)
        source = BenchmarkImages(
            annotations.paths,
            annotations.labels,
            None if annotations.boxes is None else torch.tensor(annotations.boxes, dtype=torch.float32),
            {name: torch.tensor(values) for name, values in annotations.metadata.items()},
        )
        parts = annotations.parts
        train = [i for i, part in enumerate(parts) if part == "train"]
        test = [i for i, part in enumerate(parts) if part != "train"]
        roles = None, None
        if "query" in parts:
            roles = tuple(torch.tensor([parts[i] == role for i in test]) for role in ("query", "gallery"))
        return RetrievalDataset(source, train), RetrievalDataset(
            source, test, is_query=roles[0], is_gallery=roles[1]
        )

    def check_counts(self, annotations: Annotations) -> None:
        """Compare images and classes per part with the published ones; a mismatch needs ``allow_partial``."""
        found = {}
        for part, _, _ in self.published:
            labels = [
                label for label, p in zip(annotations.labels, annotations.parts, strict=True) if p == part
            ]
            found[part] = (len(labels), len(set(labels)))
        differences = [
            f"{part} {found[part][0]:,} images / {found[part][1]:,} classes (published {images:,}"
            + (f" / {classes:,})" if classes is not None else ")")
            for part, images, classes in self.published
            if found[part][0] != images or (classes is not None and found[part][1] != classes)
        ]
        if not differences:
            self.count_report = "counts match the published dataset"
            return
        if not self.allow_partial:
            raise DataError(
                f"{self.dataset_name} at {self.root} is not the published dataset: {'; '.join(differences)}; "
                "restore the full dataset, or set allow_partial: true to run on a partial copy"
            )
        self.count_report = f"PARTIAL COPY (allow_partial): {'; '.join(differences)}"
        rank_zero_warn(f"{self.dataset_name}: {self.count_report}")

    def summary(self) -> str:
        """Return the split table, the standard split, the count check and the preprocessing."""
        lines = [
            super().summary(),
            f"{self.dataset_name} at {self.root}: {self.split_note}",
            self.count_report,
            f"images: {self.preprocessing.describe()}",
        ]
        if self.test_set.is_query is not None:
            queries, gallery = int(self.test_set.is_query.sum()), int(self.test_set.is_gallery.sum())
            lines.append(f"test: {queries:,} queries searched among {gallery:,} gallery images")
        return "\n".join(lines)
