"""Stanford Cars (Krause et al. 2013) in its three published layouts; zero-shot classes 1–98 / 99–196."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from lightning_dml.data.benchmark import Annotations, BenchmarkDataModule, check_range, parse_int
from lightning_dml.errors import DataError

NUM_CLASSES = 196
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")

Row = tuple[str, int, tuple[float, float, float, float], str]  # image, class, 1-based inclusive box, origin


def mat_records(path: Path, fields: tuple[str, ...]) -> np.ndarray:
    """Return the ``annotations`` struct array of a MATLAB file, checking that it has ``fields``."""
    import scipy.io  # deferred for start-up time

    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; restore it from the Stanford Cars archive")
    try:
        records = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True).get("annotations"))
    except Exception as error:  # scipy fails on malformed files with many error types
        raise DataError(
            f"cannot read {path} as a MATLAB file ({error}); restore it from the archive"
        ) from None
    names = records.dtype.names or ()
    missing = [name for name in fields if name not in names]
    if missing:
        raise DataError(
            f"{path}: the annotations lack the fields {', '.join(missing)}; restore the original file"
        )
    return records


def box_of(record: Any) -> tuple[float, float, float, float]:
    """Return a record's ``bbox_x1 .. bbox_y2`` as floats."""
    return tuple(float(record[name]) for name in BOX_FIELDS)


class Cars196(BenchmarkDataModule):
    """Cars196: 16,185 images of 196 car models; classes 1–98 train (8,054), 99–196 test (8,131).

    Three layouts are read, whichever ``root`` holds: ``cars_annos.mat`` with ``car_ims/`` (the
    ``test`` flag, a classification split, is ignored); the devkit (``cars_train/``, ``cars_test/``,
    ``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat`` at the root or in ``devkit/``);
    the class-folder copy (``anno_train.csv``, ``anno_test.csv``, ``car_data/.../{train,test}/<model>/``).
    The test set is evaluated leave-one-out.

    Args:
        root: the folder holding one of the layouts.
        crop_boxes: crop every image to its annotated box.
        **kwargs: the :class:`BenchmarkDataModule` arguments.
    """

    dataset_name = "Cars196"
    layout = (
        "{cars_annos.mat, car_ims/<image>.jpg} or {cars_train/, cars_test/, devkit/cars_train_annos.mat, "
        "cars_test_annos_withlabels.mat} or {names.csv, anno_train.csv, anno_test.csv, "
        "car_data/[car_data/]{train,test}/<model>/<image>.jpg}"
    )
    where_to_get = (
        "the Stanford page is offline: the copies on Kaggle (stanford-cars-dataset, "
        "stanford-car-dataset-by-classes-folder) hold these layouts"
    )
    published = (("train", 8054, 98), ("test", 8131, 98))
    split_note = "zero-shot, classes 1–98 train, 99–196 test (leave-one-out)"

    def __init__(self, root: str, crop_boxes: bool = False, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.crop_boxes = crop_boxes

    def read(self) -> Annotations:
        """Read whichever layout ``root`` holds and split by class id."""
        root = Path(self.root)
        if (root / "cars_annos.mat").is_file():
            rows = self.read_annos_mat(root)
        elif (root / "devkit" / "cars_train_annos.mat").is_file():
            rows = self.read_devkit(root)
        elif (root / "anno_train.csv").is_file():
            rows = self.read_class_folders(root)
        else:
            raise DataError(
                f"no Stanford Cars layout found in {root}; expected the tree {self.layout} "
                f"(set root to the folder holding it; {self.where_to_get})"
            )
        for _, label, _, origin in rows:
            check_range(origin, "class id", label, 1, NUM_CLASSES)
        return Annotations(
            paths=[path for path, _, _, _ in rows],
            labels=[label for _, label, _, _ in rows],
            parts=["train" if label <= NUM_CLASSES // 2 else "test" for _, label, _, _ in rows],
            origins=[origin for _, _, _, origin in rows],
            boxes=[(x1 - 1, y1 - 1, x2, y2) for _, _, (x1, y1, x2, y2), _ in rows]
            if self.crop_boxes
            else None,
        )

    @staticmethod
    def read_annos_mat(root: Path) -> list[Row]:
        """Read ``cars_annos.mat``: ``relative_im_path``, the box, ``class`` (``test`` is not used)."""
        path = root / "cars_annos.mat"
        records = mat_records(path, ("relative_im_path", *BOX_FIELDS, "class"))
        return [
            (str(root / str(r["relative_im_path"])), int(r["class"]), box_of(r), f"{path} annotation {i}")
            for i, r in enumerate(records, 1)
        ]

    @staticmethod
    def read_devkit(root: Path) -> list[Row]:
        """Read the devkit's training and labelled test annotations (box, ``class``, ``fname``)."""
        test_file = next(
            (
                p
                for p in (
                    root / "cars_test_annos_withlabels.mat",
                    root / "devkit" / "cars_test_annos_withlabels.mat",
                )
                if p.is_file()
            ),
            root / "cars_test_annos_withlabels.mat",
        )
        rows = []
        for path, images in (
            (root / "devkit" / "cars_train_annos.mat", "cars_train"),
            (test_file, "cars_test"),
        ):
            folder = (
                root / images / images if (root / images / images).is_dir() else root / images
            )  # Kaggle nests
            records = mat_records(path, (*BOX_FIELDS, "class", "fname"))
            rows += [
                (str(folder / str(r["fname"])), int(r["class"]), box_of(r), f"{path} annotation {i}")
                for i, r in enumerate(records, 1)
            ]
        return rows

    @staticmethod
    def read_class_folders(root: Path) -> list[Row]:
        """Read ``anno_{train,test}.csv`` rows ``file,x1,y1,x2,y2,class``; find each file in its split."""
        found = {
            (path.parent.parent.name, path.name): str(path)
            for path in (root / "car_data").rglob("*")
            if path.parent.parent.name in ("train", "test") and path.is_file()
        }
        rows = []
        for split in ("train", "test"):
            path = root / f"anno_{split}.csv"
            if not path.is_file():
                raise DataError(f"annotation file not found: {path}; expected the tree {Cars196.layout}")
            with path.open(newline="", encoding="utf-8") as file:
                lines = [(n, row) for n, row in enumerate(csv.reader(file), 1) if row]
            if lines and not lines[0][1][-1].strip().isdigit():
                lines = lines[1:]  # a header row
            for line, row in lines:
                if len(row) != 6:
                    raise DataError(f"{path} line {line}: expected file,x1,y1,x2,y2,class; fix the line")
                name, *numbers = (value.strip() for value in row)
                x1, y1, x2, y2, label = (parse_int(path, line, "value", v) for v in numbers)
                image = found.get((split, name)) or f"{root}/car_data/{split}/<model>/{name}"
                rows.append((image, label, (x1, y1, x2, y2), f"{path} line {line}"))
        return rows
