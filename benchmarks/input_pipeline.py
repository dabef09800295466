"""Input pipeline throughput per CPU core: CUB-like JPEG files against the decoded-image cache.

    python -m benchmarks.input_pipeline [--images 1000] [--repeats 3] [--results benchmarks/results]

Writes ``--images`` CUB-like JPEGs (500 × 375, smooth noise with shapes and grain, PIL quality 75) into a
temporary CUB-200-2011 tree, prepares its cache (short side 256) with ``lightning-dml-cache``'s code, and
times one pass of a ``DataLoader`` with one worker process on one thread over every image, for the
training (resize 256, random resized crop 224, flip) and evaluation (resize 256, centre crop 224)
transforms of ``CUB200``. The float steps (uint8 → float, normalisation) run in one of three places:
``worker`` (the usual recipe, and the reference: JPEG files normalised in the worker), ``training
process`` (what a data module driven by a trainer does on the CPU: the worker sends uint8 batches and
``on_after_batch_transfer`` scales each batch; its time is timed and added to the worker's) or ``GPU``
(not timed here). img/s per core = images ÷ (the one-worker pass's wall time + the training process's
scaling time); best of ``--repeats`` passes. Target (issue 13): the cache ≥ 3 × the JPEG files. Writes
``input_pipeline.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from benchmarks.retrieval_eval import cpu_model, cpu_pressure
from lightning_dml.data import CUB200, RetrievalDataset
from lightning_dml.data.cache import prepare_cache
from lightning_dml.data.datamodule import collate_items
from tests.data.tree_builders import cub_tree, spread

TARGET = 3.0
BATCH = 32


def photo(seed: int) -> Image.Image:
    """A 500 × 375 image whose JPEG size is like a photograph's: smooth colour, shapes and grain."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.normal(128, 40, (47, 63, 3)).clip(0, 255).astype(np.uint8)).resize((500, 375))
    draw = ImageDraw.Draw(base)
    for _ in range(8):
        x, y, w, h = rng.integers(0, 500), rng.integers(0, 375), rng.integers(20, 150), rng.integers(20, 150)
        draw.ellipse((x, y, x + w, y + h), fill=tuple(rng.integers(0, 256, 3).tolist()))
    grain = rng.normal(0, 12, (375, 500, 3))
    return Image.fromarray((np.asarray(base) + grain).clip(0, 255).astype(np.uint8))


def write_dataset(root: Path, images: int) -> None:
    """A CUB-200-2011 tree of ``images`` images, each file a :func:`photo`, over up to 100 classes of each
    half (at least 10 images each)."""
    half = max(2, min(100, images // 20))
    counts = spread(images // 2, range(1, 1 + half)) | spread(images - images // 2, range(101, 101 + half))
    folder = cub_tree(root, counts)
    for seed, path in enumerate(sorted((folder / "images").rglob("*.jpg"))):
        photo(seed).save(path, "JPEG", quality=75)


def one_thread(_: int) -> None:
    """Worker start: one intra-op thread."""
    torch.set_num_threads(1)


def images_per_second(dataset: RetrievalDataset, repeats: int, finish: Callable | None) -> float:
    """The best of ``repeats`` passes over ``dataset`` by a one-worker loader, in images per core-second: the
    pass's wall time (the worker's start-up and first batch excluded), plus the time ``finish`` then takes
    on every batch's images in this process."""
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        num_workers=1,
        worker_init_fn=one_thread,
        prefetch_factor=4,
        collate_fn=collate_items,
    )
    best = 0.0
    for _ in range(repeats):
        batches = iter(loader)
        next(batches)
        start = time.perf_counter()
        images = [batch["image"] for batch in batches]
        seconds = time.perf_counter() - start  # the worker's time: this process only waits
        if finish is not None:  # then the training process's own time, batch by batch
            start = time.perf_counter()
            for batch in images:
                finish(batch)
            seconds += time.perf_counter() - start
        best = max(best, sum(map(len, images)) / seconds)
    return best


#: Where the float steps run: in the worker, in the training process after transfer (timed), on the GPU.
PLACES = {"JPEG files": ("worker", "training process"), "cache": ("worker", "training process", "GPU")}


def measure(root: Path, images: int, repeats: int) -> list[dict]:
    """Rows of (path, transform, where the float steps run, img/s per core) on a fresh tree under ``root``."""
    write_dataset(root / "data", images)
    kwargs = {"allow_partial": True, "validation": ["test"], "num_workers": 0}
    files = CUB200(str(root / "data"), **kwargs)
    cached = CUB200(str(root / "data"), cache=str(root / "cache"), **kwargs)
    start = time.perf_counter()
    prepare_cache(cached, 256, workers=1)
    preparation = time.perf_counter() - start
    rows = []
    for name, module in (("JPEG files", files), ("cache", cached)):
        module.setup()
        source = module.test_set.source  # every image of the tree
        for train in (True, False):
            for place in PLACES[name]:
                transform = module.preprocessing.transform(train, scale=place == "worker")
                finish = module.preprocessing.scale_batch if place == "training process" else None
                speed = images_per_second(RetrievalDataset(source, None, transform), repeats, finish)
                rows.append({"path": name, "train": train, "float_steps": place, "img_s": speed})
    for row in rows:
        reference = next(r for r in rows if r["path"] == "JPEG files" and r["train"] == row["train"])
        row["ratio"] = row["img_s"] / reference["img_s"]
    rows.append(
        {"path": "cache preparation", "train": None, "float_steps": "", "img_s": images / preparation}
    )
    return rows


def render(rows: list[dict], environment: dict) -> str:
    """The markdown report."""
    lines = [
        "# Input pipeline: JPEG files against the decoded-image cache",
        "",
        f"`python -m benchmarks.input_pipeline --images {environment['images']} --repeats "
        f"{environment['repeats']}`: CUB-like 500 × 375 JPEGs (mean {environment['jpeg_kib']:.0f} KiB), "
        f"one loader worker on one thread, batches of {BATCH}, best pass. {environment['cpu']}; CPU pressure "
        f"at start / end {environment['pressure_start']} / {environment['pressure_end']}. Float steps "
        "(uint8 → float, normalisation) in: the worker (the usual recipe; the reference), the training "
        "process (a data module under a trainer on the CPU: uint8 batches, scaled after transfer, that time "
        "added) or the GPU (what a GPU run does; not timed here). img/s per core = images ÷ (the worker's "
        "time + the training process's).",
        "",
        f"| images from | transform | float steps in | img/s per core | × JPEG files (target ≥ {TARGET:g}) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row["train"] is None:
            lines.append(f"| {row['path']} (one process, short side 256) | – | – | {row['img_s']:.0f} | – |")
            continue
        transform = "training" if row["train"] else "evaluation"
        if row["path"] == "JPEG files":
            verdict = "– (reference)" if row["float_steps"] == "worker" else f"{row['ratio']:.1f}"
        else:
            verdict = f"{row['ratio']:.1f} ({'met' if row['ratio'] >= TARGET else 'not met'})"
        lines.append(
            f"| {row['path']} | {transform} | {row['float_steps']} | {row['img_s']:.0f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure, print the table and write ``input_pipeline.md`` and ``.json`` to ``--results``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    options = parser.parse_args()
    torch.set_num_threads(1)
    environment = {"images": options.images, "repeats": options.repeats, "cpu": cpu_model()}
    environment["pressure_start"] = cpu_pressure()
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(Path(folder), options.images, options.repeats)
        jpegs = list(Path(folder, "data").rglob("*.jpg"))
        environment["jpeg_kib"] = sum(os.path.getsize(p) for p in jpegs) / len(jpegs) / 1024
    environment["pressure_end"] = cpu_pressure()
    report = render(rows, environment)
    print(report)
    options.results.mkdir(parents=True, exist_ok=True)
    (options.results / "input_pipeline.md").write_text(report)
    (options.results / "input_pipeline.json").write_text(
        json.dumps({"environment": environment, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
