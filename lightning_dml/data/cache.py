"""The decoded-image cache: a data module's images decoded once, resized to a short side, in litdata chunks.

``lightning-dml-cache`` writes it with ``litdata.optimize``: one item per image of the data module's source,
``{"index": i, "image": (H, W, 3) uint8}``, plus ``manifest.json`` (what it holds). The data module's
``cache`` key reads it in place of the image files; annotations, split, roles and count checks still come
from the data module's own ``build`` (see :meth:`ImageFileDataModule.screen_images`).

Stored raw, not as JPEG: reading a 341×256 item back takes 0.3 ms raw against 1.4 ms for quality-95 JPEG
bytes decoded by torchvision (one core); decoding is the cost the cache removes, and raw pixels are exact.
The price is size, about 5 × the JPEG's (CUB train at 256 px 1.2 GB, SOP train 11.7 GB): local disk.

Read by index (``StreamingDataset.__getitem__``), not by litdata's streaming iteration: P×K batches need any
image of a class at any time, so the batch samplers choose the indices and shard whole batches across ranks
themselves, as for image files. litdata's iteration shards chunks by rank and shuffles within windows, which
cannot form class-balanced batches. Its ``__getitem__`` takes global indices on every rank.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from lightning_dml.data.base import ImageFiles, RetrievalDataset
from lightning_dml.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "lightning_dml decoded images 2: raw uint8 (H, W, 3), shorter side short_side"
#: What must agree between a cache and the data module reading it (the rest of the manifest is a record).
IDENTITY = ("format", "dataset", "images", "source")
CHUNK_BYTES = "64MB"


def source_digest(source: ImageFiles) -> str:
    """Return a hash of a source's image paths (relative to their common folder, so a moved copy of the
    dataset keeps it), labels and boxes (when it crops to boxes)."""
    paths = [str(path) for path in source.paths]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\n".join(os.path.relpath(path, common) for path in paths).encode())
    digest.update(source.labels.numpy().tobytes())
    boxes = getattr(source, "boxes", None)
    if boxes is not None:
        digest.update(boxes.numpy().tobytes())
    return digest.hexdigest()


def describe(manifest: dict[str, Any]) -> str:
    """Return ``<dataset> at <root>, short side <s>, <n> images`` of a manifest."""
    return (
        f"{manifest['dataset']} at {manifest['root']}, short side {manifest['short_side']}, "
        f"{manifest['images']:,} images"
    )


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """Return the manifest of the cache in ``folder``, or ``None`` when it has none."""
    path = folder / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def resized_item(source: ImageFiles, short_side: int, skipped: frozenset[int], i: int) -> dict[str, Any]:
    """Return cache item ``i``: image ``i`` of ``source`` as uint8 ``(H, W, 3)``, its shorter side resized to
    ``short_side`` as the image files' transform resizes (``ToImage`` then ``Resize``); an empty image when
    ``skipped``."""
    # Runs in a forked litdata worker: OpenMP's thread pool does not survive a fork, so one thread, as
    # PyTorch's own DataLoader workers do (else a parent that used the pool deadlocks the copy below).
    torch.set_num_threads(1)
    if i in skipped:
        return {"index": i, "image": torch.zeros(0, 0, 3, dtype=torch.uint8)}
    image = v2.Resize(short_side)(v2.functional.to_image(source.load(i)))
    return {"index": i, "image": image.as_subclass(torch.Tensor).permute(1, 2, 0).contiguous()}


def prepare_cache(module: Any, short_side: int = 256, workers: int | None = None) -> dict[str, Any]:
    """Write the cache of ``module`` (an :class:`ImageFileDataModule`) into its ``cache`` folder; return the
    manifest.

    Every image is decoded first (``verify_images``): undecodable ones stop it, listed, unless the module
    has ``skip_corrupt`` (then they are left out, and recorded). The chunks are written to a temporary
    folder beside the target and renamed into place once complete, so an interrupted run leaves no cache.
    A target holding this cache already is kept; one holding anything else is refused.
    """
    from litdata import optimize  # deferred: start-up time of the CLI

    if module.cache is None:
        raise DataError("data.init_args.cache is not set; set it to the folder the cache is written to")
    target = Path(module.cache)
    pool, test = module.build()
    source = pool.source
    manifest = {
        "format": FORMAT,
        "dataset": type(module).__name__,
        "root": str(Path(getattr(module, "root", None) or getattr(module, "path", "")).resolve()),
        "short_side": short_side,
        "images": len(source),
        "source": source_digest(source),
    }
    if target.exists():
        existing = read_manifest(target)
        if existing is None:
            raise DataError(f"{target} exists and is not an image cache; choose another folder for cache")
        if all(existing.get(key) == manifest[key] for key in (*IDENTITY, "short_side")):
            return existing
        raise DataError(
            f"{target} holds the cache of {describe(existing)}, not of {describe(manifest)}; "
            "choose another folder for cache, or delete that one"
        )
    module.verify_images = True
    pool, test = module.screen_files(pool, test)
    skipped = {str(path) for path in module.skipped}
    manifest["skipped"] = sorted(skipped)
    manifest["sets"] = {name: [len(v), v.num_classes] for name, v in (("train", pool), ("test", test))}
    skipped_ids = frozenset(i for i, path in enumerate(source.paths) if str(path) in skipped)
    partial_folder = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        optimize(
            partial(resized_item, source, short_side, skipped_ids),
            list(range(len(source))),
            str(partial_folder),
            chunk_bytes=CHUNK_BYTES,
            num_workers=workers or min(8, os.cpu_count() or 1),
            keep_data_ordered=True,  # item i at position i (checked when read)
            reorder_files=False,
            start_method=multiprocessing.get_start_method(),  # litdata would force spawn on the process
        )
        index = json.loads((partial_folder / "index.json").read_text(encoding="utf-8"))
        written = sum(chunk["chunk_size"] for chunk in index["chunks"])
        if written != len(source):
            raise DataError(
                f"writing the cache {target} stored {written} of {len(source)} images (see the workers' "
                "errors above); fix their cause and run lightning-dml-cache again"
            )
        (partial_folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        partial_folder.rename(target)
    finally:
        shutil.rmtree(partial_folder, ignore_errors=True)
    return manifest


class CachedImages(ImageFiles):
    """The images of an :class:`ImageFiles` source read from its cache: ``load(i)`` returns the stored uint8
    ``(3, H, W)`` tensor; paths and labels stay the files' (for names and the embedding files)."""

    def __init__(self, source: ImageFiles, folder: Path) -> None:
        super().__init__(source.paths, source.labels)
        self.folder = folder
        self._items: Any = None  # the StreamingDataset, opened in each process that reads
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_items": None}

    def load(self, i: int) -> torch.Tensor:
        """Return image ``i`` as a ``(3, H, W)`` uint8 tensor (channels-last strides) from the cache."""
        if self._pid != os.getpid():
            from litdata import StreamingDataset  # deferred: start-up time of the CLI

            self._items, self._pid = StreamingDataset(str(self.folder)), os.getpid()
        item = self._items[i]
        if item["index"] != i:
            damaged = f"{self.folder}: item {i} holds image {item['index']}"
            raise DataError(f"{damaged}; the cache is damaged: delete it and prepare it again")
        # a copy (litdata's tensor is a read-only view of the chunk's bytes), seen as (3, H, W): channels
        # last, the layout torch's uint8 resize works in (random resized crops 30 % faster than from CHW)
        return item["image"].clone().permute(2, 0, 1)


def cached_views(
    module: Any, pool: RetrievalDataset, test: RetrievalDataset, needed: int
) -> tuple[RetrievalDataset, RetrievalDataset, list[str]]:
    """Return ``pool`` and ``test`` reading their images from ``module.cache`` (checked against their source),
    and the paths left out when it was prepared. ``needed`` is the largest size the transforms resize to."""
    folder = Path(module.cache)
    manifest = read_manifest(folder)
    prepare = "run lightning-dml-cache with this data config"
    if manifest is None:
        raise DataError(f"no image cache in {folder} ({MANIFEST} missing); {prepare} to write it")
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"{folder} holds an image cache of another format ({manifest.get('format')}), not "
            f"{FORMAT!r}; delete it and {prepare} to write it again"
        )
    expected = {
        "format": FORMAT,
        "dataset": type(module).__name__,
        "images": len(pool.source),
        "source": source_digest(pool.source),
    }
    if any(manifest.get(key) != expected[key] for key in IDENTITY):
        raise DataError(
            f"{folder} holds the cache of {describe(manifest)}, not of this {expected['dataset']} "
            f"({expected['images']:,} images); {prepare} and another cache folder"
        )
    if needed > manifest["short_side"]:
        raise DataError(
            f"the transforms resize to {needed} px but {folder} holds images of short side "
            f"{manifest['short_side']}; {prepare} and --short_side {needed}"
        )
    if manifest["skipped"] and not module.skip_corrupt:
        raise DataError(
            f"{folder} was prepared with skip_corrupt: true ({len(manifest['skipped'])} undecodable images "
            "left out); set skip_corrupt: true, or repair the images and prepare the cache again"
        )
    source = CachedImages(pool.source, folder)
    views = [
        RetrievalDataset(source, view.indices, is_query=view.is_query, is_gallery=view.is_gallery)
        for view in (pool, test)
    ]
    return views[0], views[1], manifest["skipped"]
