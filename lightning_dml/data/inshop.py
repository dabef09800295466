"""DeepFashion In-shop Clothes Retrieval (Liu et al. 2016): train items vs queries against a gallery."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lightning_dml.data.benchmark import Annotations, BenchmarkDataModule, parse_int, read_rows
from lightning_dml.data.splits import listed
from lightning_dml.errors import DataError

STATUSES = ("train", "query", "gallery")
ITEM_ID = re.compile(r"id_(\d+)")
BOX_FILE = "list_bbox_inshop.txt"


class InShop(BenchmarkDataModule):
    """In-Shop: train 25,882 images of 3,997 items; test 14,218 queries against 12,612 gallery images.

    Reads ``list_eval_partition.txt`` (line 1 the count, line 2 the header, rows ``image_name item_id
    evaluation_status``). The test set is one set with query and gallery roles (disjoint images, the
    items of neither in training): each query is searched in the gallery, never leave-one-out. Class ids
    are the item numbers (``id_00000042`` -> 42).

    Args:
        root: the benchmark folder, holding ``Eval/list_eval_partition.txt`` (or the file itself) and
            ``img/`` (or ``Img/img/``); ``Anno/list_bbox_inshop.txt`` may also lie in ``root``.
        crop_boxes: crop every image to its box from ``Anno/list_bbox_inshop.txt``.
        **kwargs: the :class:`BenchmarkDataModule` arguments.
    """

    dataset_name = "In-Shop Clothes"
    layout = (
        "{Eval/list_eval_partition.txt, Anno/list_bbox_inshop.txt, "
        "img/{MEN,WOMEN}/<category>/<item>/<image>.jpg}"
    )
    where_to_get = (
        "download Eval/, Anno/ and Img/img.zip of the In-shop Clothes Retrieval Benchmark from "
        "mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    )
    published = (("train", 25882, 3997), ("query", 14218, None), ("gallery", 12612, None))
    split_note = "zero-shot, 3,997 train items; 3,985 test items, queries searched in the gallery"

    def __init__(self, root: str, crop_boxes: bool = False, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.crop_boxes = crop_boxes

    def read(self) -> Annotations:
        """Read the partition (and boxes), checking statuses, item ids and that train items are not tested."""
        root = Path(self.root)
        partition = self.find_root("list_eval_partition.txt", "Eval") / "list_eval_partition.txt"
        rows = self.read_listing(partition, 3)
        images = next((base for base in (root, root / "Img") if (base / "img").is_dir()), root)
        annotations = Annotations()
        for line, (name, item, status) in rows:
            where = f"{partition} line {line}"
            match = ITEM_ID.fullmatch(item)
            if match is None:
                raise DataError(f"{where}: item id {item!r} is not of the form id_<number>; fix the line")
            if status not in STATUSES:
                raise DataError(f"{where}: evaluation_status {status!r}; allowed: {', '.join(STATUSES)}")
            annotations.paths.append(os.path.join(images, name))
            annotations.labels.append(int(match.group(1)))
            annotations.parts.append(status)
            annotations.origins.append(where)
        check_items_disjoint(partition, rows)
        if self.crop_boxes:
            annotations.boxes = self.read_boxes(root, [name for _, (name, _, _) in rows])
        return annotations

    def read_listing(self, path: Path, fields: int) -> list[tuple[int, list[str]]]:
        """Return the rows of an In-Shop list file, checking them against the count on its first line."""
        rows = read_rows(path, fields, skip=2, layout=self.layout)
        count = parse_int(path, 1, "image count", path.read_text(encoding="utf-8").split(maxsplit=1)[0])
        if count != len(rows):
            raise DataError(f"{path} line 1 announces {count} images but lists {len(rows)}; restore the file")
        return rows

    def read_boxes(self, root: Path, names: list[str]) -> list[tuple[float, float, float, float]]:
        """Return ``(x_1, y_1, x_2, y_2)`` per image from rows ``image_name type pose x_1 y_1 x_2 y_2``."""
        path = next((p for p in (root / "Anno", root) if (p / BOX_FILE).is_file()), root / "Anno") / BOX_FILE
        boxes = {}
        for line, (name, _, _, *values) in self.read_listing(path, 7):
            boxes[name] = tuple(float(parse_int(path, line, "box coordinate", v)) for v in values)
        missing = [name for name in names if name not in boxes]
        if missing:
            raise DataError(f"{path} has no box for {missing[0]}; restore it or set crop_boxes: false")
        return [boxes[name] for name in names]


def check_items_disjoint(partition: Path, rows: list[tuple[int, list[str]]]) -> None:
    """Raise a DataError listing the items that appear both in training and in the query/gallery rows."""
    train = {item for _, (_, item, status) in rows if status == "train"}
    tested = {item for _, (_, item, status) in rows if status != "train"}
    shared = sorted(train & tested)
    if shared:
        raise DataError(
            f"{partition}: {len(shared)} items are both train and query/gallery ({listed(shared, 10)}); "
            "In-Shop's items are disjoint: restore the original partition file"
        )
