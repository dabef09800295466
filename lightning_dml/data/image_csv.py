"""Images listed in a CSV file: one row per image with its path, label and split (and optional roles)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from lightning_dml.data.base import ImageFiles, RetrievalDataset, check_files_exist
from lightning_dml.data.image_files import ImageFileDataModule
from lightning_dml.data.transforms import IMAGE_FILES
from lightning_dml.errors import DataError

REQUIRED_COLUMNS = ("path", "label", "split")
ROLE_COLUMNS = ("is_query", "is_gallery")
SPLITS = ("train", "test")
FLAGS = {"1": True, "true": True, "0": False, "false": False}

Row = tuple[int, dict[str, str]]


def read_rows(csv_path: Path) -> tuple[list[str], list[Row]]:
    """Return the column names and ``(line number, row)`` of each row; missing columns raise a DataError."""
    if not csv_path.is_file():
        raise DataError(f"CSV file not found: {csv_path} (set path to a CSV with columns path,label,split)")
    with csv_path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DataError(
                f"{csv_path} lacks the columns {', '.join(missing)}; required: {','.join(REQUIRED_COLUMNS)} "
                f"(optional: {','.join(ROLE_COLUMNS)}); found: {','.join(columns) or 'none'}"
            )
        reader.fieldnames = columns
        wanted = [name for name in (*REQUIRED_COLUMNS, *ROLE_COLUMNS) if name in columns]
        rows = [(reader.line_num, {name: (row[name] or "").strip() for name in wanted}) for row in reader]
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows; add one row per image")
    return columns, rows


def check_row(csv_path: Path, line: int, row: dict[str, str]) -> None:
    """Raise a DataError naming the line when its path or label is empty or its split is not train/test."""
    for name in ("path", "label"):
        if not row[name]:
            raise DataError(f"{csv_path} line {line}: the {name} is empty; fill it in or remove the row")
    if row["split"] not in SPLITS:
        raise DataError(
            f"{csv_path} line {line}: split is {row['split']!r}; allowed values: {', '.join(SPLITS)}"
        )


def parse_flag(csv_path: Path, line: int, column: str, value: str) -> bool:
    """Return the boolean of a 0/1/true/false cell; anything else raises a DataError naming the line."""
    flag = FLAGS.get(value.lower())
    if flag is None:
        raise DataError(f"{csv_path} line {line}: {column} is {value!r}; allowed values: 0, 1, true, false")
    return flag


def label_ids(values: list[str]) -> list[int]:
    """Return the labels as integers if they all are; otherwise number the distinct names in sorted order."""
    try:
        return [int(value) for value in values]
    except ValueError:
        ids = {name: i for i, name in enumerate(sorted(set(values)))}
        return [ids[value] for value in values]


class ImageCSV(ImageFileDataModule):
    """Images listed in a CSV file with the columns ``path,label,split`` and optional ``is_query,is_gallery``.

    ``split`` is ``train`` or ``test``; labels are integers (kept as class ids) or names (numbered in sorted
    order). ``is_query`` / ``is_gallery`` (0/1/true/false; a missing column means all true) on the test rows
    select query-vs-gallery evaluation; without both columns the test set is evaluated leave-one-out. The
    protocol only decides whether train and test classes must be disjoint (zero-shot, checked at ``setup``).
    Preprocessing as :class:`ImageFolder`'s (``transforms`` changes it).

    Args:
        path: the CSV file.
        root: folder that relative image paths start from; ``None`` means the CSV file's folder.
        **kwargs: the :class:`ImageFileDataModule` arguments (``verify_images``, ``skip_corrupt``) and
            the :class:`RetrievalDataModule` ones.
    """

    num_channels = 3
    default_preprocessing = IMAGE_FILES

    def __init__(self, path: str, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.root = root

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Read and check the CSV (every image file must exist) and split its rows by the split column."""
        csv_path = Path(self.path)
        columns, rows = read_rows(csv_path)
        for line, row in rows:
            check_row(csv_path, line, row)
        root = csv_path.parent if self.root is None else Path(self.root)
        paths = [root / row["path"] for _, row in rows]
        check_files_exist(
            paths,
            [f"{csv_path} line {line}" for line, _ in rows],
            "fix the paths or set root to the folder they are relative to",
        )
        source = ImageFiles(paths, label_ids([row["label"] for _, row in rows]))
        is_train = torch.tensor([row["split"] == "train" for _, row in rows])
        for split, chosen in zip(SPLITS, (is_train, ~is_train), strict=True):
            if not chosen.any():
                raise DataError(f"{csv_path} has no rows with split {split}; both splits need rows")
        test_rows = [rows[i] for i in (~is_train).nonzero().flatten().tolist()]
        is_query, is_gallery = self.roles(csv_path, columns, test_rows)
        return (
            RetrievalDataset(source, is_train.nonzero().flatten()),
            RetrievalDataset(
                source, (~is_train).nonzero().flatten(), is_query=is_query, is_gallery=is_gallery
            ),
        )

    @staticmethod
    def roles(
        csv_path: Path, columns: list[str], test_rows: list[Row]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return the query and gallery flags of the test rows, or ``(None, None)`` without role columns."""
        if not any(name in columns for name in ROLE_COLUMNS):
            return None, None
        flags = [
            torch.tensor([parse_flag(csv_path, line, name, row[name]) for line, row in test_rows])
            if name in columns
            else torch.ones(len(test_rows), dtype=torch.bool)
            for name in ROLE_COLUMNS
        ]
        for name, flag in zip(ROLE_COLUMNS, flags, strict=True):
            if not flag.any():
                raise DataError(f"{csv_path}: no test row has {name} true; mark at least one")
        return flags[0], flags[1]
