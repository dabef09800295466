"""CUB-200-2011 (Wah et al. 2011) in its published layout; zero-shot split of classes 1–100 / 101–200."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchvision.datasets.utils import download_and_extract_archive

from lightning_dml.data.benchmark import Annotations, BenchmarkDataModule, check_range, parse_int, read_rows
from lightning_dml.errors import DataError

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
NUM_CLASSES = 200


class CUB200(BenchmarkDataModule):
    """CUB-200-2011: 11,788 bird images of 200 species; classes 1–100 train (5,864), 101–200 test (5,924).

    Reads ``images.txt`` (id, path), ``image_class_labels.txt`` (id, class) and ``classes.txt``;
    ``train_test_split.txt`` is the classification split and is not used. The test set is evaluated
    leave-one-out.

    Args:
        root: the ``CUB_200_2011`` folder or its parent.
        crop_boxes: crop every image to its box from ``bounding_boxes.txt``.
        download: download and extract the archive from data.caltech.edu into ``root`` if it is missing.
        **kwargs: the :class:`BenchmarkDataModule` arguments.
    """

    dataset_name = "CUB-200-2011"
    layout = (
        "CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, bounding_boxes.txt, "
        "images/<NNN.Species>/<image>.jpg}"
    )
    where_to_get = f"download: true fetches {URL}"
    published = (("train", 5864, 100), ("test", 5924, 100))
    split_note = "zero-shot, classes 1–100 train, 101–200 test (leave-one-out)"

    def __init__(self, root: str, crop_boxes: bool = False, download: bool = False, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.crop_boxes = crop_boxes
        self.download = download

    def dataset_folder(self) -> Path:
        """Return the folder holding ``images.txt``, downloading the archive first if asked to."""
        if self.download and not any(
            (Path(self.root) / d / "images.txt").is_file() for d in ("", "CUB_200_2011")
        ):
            download_and_extract_archive(URL, self.root, md5=MD5)
        return self.find_root("images.txt", "CUB_200_2011")

    def read(self) -> Annotations:
        """Read the image list, labels (checked against ``classes.txt``) and optionally the boxes."""
        folder = self.dataset_folder()
        images = read_rows(folder / "images.txt", 2, layout=self.layout)
        class_file = folder / "classes.txt"
        classes = {parse_int(class_file, line, "class id", v[0]) for line, v in read_rows(class_file, 2)}
        label_file = folder / "image_class_labels.txt"
        labels = {}
        for line, (image_id, class_id) in read_rows(label_file, 2, layout=self.layout):
            label = parse_int(label_file, line, "class id", class_id)
            check_range(f"{label_file} line {line}", "class id", label, 1, NUM_CLASSES)
            if label not in classes:
                raise DataError(
                    f"{label_file} line {line}: class id {label} is not in {class_file}; restore both"
                )
            labels[image_id] = label
        unlabelled = [image_id for _, (image_id, _) in images if image_id not in labels]
        if unlabelled:
            raise DataError(
                f"{len(unlabelled)} image ids of {folder / 'images.txt'} have no class in {label_file} "
                f"(first: {unlabelled[0]}); restore the annotation files"
            )
        annotations = Annotations(
            paths=[os.path.join(folder, "images", path) for _, (_, path) in images],
            labels=[labels[image_id] for _, (image_id, _) in images],
            origins=[f"{folder / 'images.txt'} line {line}" for line, _ in images],
        )
        annotations.parts = ["train" if label <= NUM_CLASSES // 2 else "test" for label in annotations.labels]
        if self.crop_boxes:
            annotations.boxes = self.read_boxes(folder / "bounding_boxes.txt", [v[0] for _, v in images])
        return annotations

    def read_boxes(self, path: Path, image_ids: list[str]) -> list[tuple[float, float, float, float]]:
        """Return ``(x1, y1, x2, y2)`` per image from ``bounding_boxes.txt`` rows ``id x y width height``."""
        boxes = {}
        for line, (image_id, *values) in read_rows(path, 5, layout=self.layout):
            try:
                x, y, width, height = map(float, values)
            except ValueError:
                raise DataError(f"{path} line {line}: box values must be numbers; fix the line") from None
            boxes[image_id] = (x, y, x + width, y + height)
        missing = [image_id for image_id in image_ids if image_id not in boxes]
        if missing:
            raise DataError(
                f"{path} has no box for image id {missing[0]}; restore it or set crop_boxes: false"
            )
        return [boxes[image_id] for image_id in image_ids]
