"""What every data module reading image files shares: an upfront decoding pass, ``skip_corrupt`` and the
decoded-image ``cache``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from PIL import Image
from rich.progress import track

from lightning_dml.data.base import UNDECODABLE, ImageFiles, RetrievalDataset
from lightning_dml.data.cache import cached_views
from lightning_dml.data.datamodule import RetrievalDataModule
from lightning_dml.errors import DataError

LISTED = 10  # undecodable files named in a message; a longer list goes to a file


def decodes(path: str) -> bool:
    """Return whether PIL opens ``path`` and decodes all of its pixel data.

    ``Image.verify()`` would pass truncated JPEGs, so the pixels are decoded: JPEGs at 1/8 scale, which still
    reads the whole file.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except UNDECODABLE:
        return False
    return True


def undecodable(paths: Sequence[str]) -> list[str]:
    """Return, sorted, the distinct paths among ``paths`` that PIL cannot decode, with a progress bar."""
    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        results = track(
            pool.map(decodes, unique),
            total=len(unique),
            description=f"decoding {len(unique):,} images",
            disable=rank_zero_only.rank != 0,
        )
        return [path for path, ok in zip(unique, results, strict=True) if not ok]


def undecodable_report(paths: list[str]) -> str:
    """Return ``N undecodable image files: <paths>``, naming the first few and writing all to a file when
    there are more."""
    shown = ", ".join(paths[:LISTED])
    if len(paths) > LISTED:
        with tempfile.NamedTemporaryFile("w", prefix="undecodable_", suffix=".txt", delete=False) as file:
            file.write("\n".join(paths) + "\n")
        shown += f" ... (all {len(paths)} listed in {file.name})"
    return f"{len(paths)} undecodable image files: {shown}"


def file_paths(dataset: RetrievalDataset) -> list[str]:
    """Return the path of every item of a view of :class:`ImageFiles`."""
    source: ImageFiles = dataset.source
    return [str(source.paths[i]) for i in dataset.indices.tolist()]


def without(dataset: RetrievalDataset, bad: set[str]) -> RetrievalDataset:
    """Return the view without the items whose file is in ``bad`` (their query/gallery roles too)."""
    keep = torch.tensor([path not in bad for path in file_paths(dataset)], dtype=torch.bool)
    roles = {
        name: None if flags is None else flags[keep]
        for name, flags in (("is_query", dataset.is_query), ("is_gallery", dataset.is_gallery))
    }
    return dataset.select(keep.nonzero().flatten(), dataset.transform, **roles)


class ImageFileDataModule(RetrievalDataModule):
    """A data module whose images are files (:class:`ImageFiles`), checked at ``setup`` on request.

    Args:
        verify_images: decode every image of the training pool and test set at ``setup``, before any
            training step; undecodable files stop the run, all listed, unless ``skip_corrupt``.
        skip_corrupt: decode every image at ``setup`` (as ``verify_images`` does) and leave out those that
            cannot be decoded, warning once with their list, so that the split checks see the images used.
            Otherwise an undecodable image stops the run with its path when it is read.
        cache: a folder holding the images decoded by ``lightning-dml-cache`` (run with this data config):
            images are read from it instead of the files, the split and its checks unchanged.
        **kwargs: the :class:`RetrievalDataModule` arguments.
    """

    def __init__(
        self, verify_images: bool = False, skip_corrupt: bool = False, cache: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.verify_images = verify_images
        self.skip_corrupt = skip_corrupt
        self.cache = cache
        self.decoded = 0
        self.skipped: list[str] = []

    def screen_images(
        self, pool: RetrievalDataset, test: RetrievalDataset
    ) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Return pool and test set reading their images from ``cache`` (decoded when it was prepared; those
        left out then are left out again), else :meth:`screen_files`."""
        if self.cache is None:
            return self.screen_files(pool, test)
        resize = self.preprocessing.resize
        needed = max(resize) if isinstance(resize, tuple) else resize or self.preprocessing.image_size
        pool, test, skipped = cached_views(self, pool, test, needed)
        self.skipped = skipped
        return (without(pool, set(skipped)), without(test, set(skipped))) if skipped else (pool, test)

    def screen_files(
        self, pool: RetrievalDataset, test: RetrievalDataset
    ) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Return pool and test set; with ``verify_images`` or ``skip_corrupt`` decode their image files first
        and refuse (listing them) or leave out those that cannot be decoded."""
        if not (self.verify_images or self.skip_corrupt):
            return pool, test
        paths = file_paths(pool) + file_paths(test)
        bad = undecodable(paths)
        self.decoded = len(set(paths))
        if bad and not self.skip_corrupt:
            fix = "repair or remove them, or set skip_corrupt: true to leave them out"
            raise DataError(f"{undecodable_report(bad)}; {fix}")
        self.skipped = bad
        if not bad:
            return pool, test
        rank_zero_warn(f"skip_corrupt: left out {undecodable_report(bad)}")
        return without(pool, set(bad)), without(test, set(bad))

    def summary(self) -> str:
        """Return the split table and, after an upfront decoding pass, what it found."""
        if self.cache is not None:
            return f"{super().summary()}\nimages read from the decoded cache {self.cache}"
        if not (self.verify_images or self.skip_corrupt):
            return super().summary()
        found = f"skipped {len(self.skipped)} undecodable images" if self.skip_corrupt else "all decode"
        return f"{super().summary()}\ndecoded {self.decoded:,} image files at setup: {found}"
