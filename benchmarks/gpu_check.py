"""GPU check: what one GPU does with the benchmark recipes, in a few minutes (the limit is 8).

    python -m benchmarks.gpu_check                 # on a GPU machine: writes results/gpu_check.{md,json}
    python -m benchmarks.gpu_check --toy --out DIR # tiny sizes, any device (the tests run this on CPU)

Rows, each measured on its own so that one failure does not hide the others:

- ``resnet50_ms`` training steps (configs/resnet50_ms.yaml's model: timm ResNet-50 from random weights,
  512-d head, multi-similarity loss and miner, AdamW) at 224 px, batches of 128 (16 classes × 8) made once
  on the GPU (no input pipeline): img/s in float32, bf16-mixed, and bf16-mixed with channels_last, so the
  recipes' choice of bf16 + channels_last is measured, not assumed.
- the same bf16-mixed + channels_last step fed by the decoded-image cache's loader (a generated CUB-like
  tree of 500 × 375 JPEGs prepared by ``lightning-dml-cache``'s code; workers crop and flip uint8 images,
  the float steps run batched on the GPU, as a GPU run does): img/s against the synthetic row says whether
  training is input-bound.
- ``deml_release`` (configs/deml/release.yaml's model: GoogLeNet, 3 streams × 3 learners, 26 images at 227 px
  per GPU): seconds per training step with the recipe's precision and memory format.
- ``sop_evaluation``: exact Recall@{1,10,100,1000}, R-Precision and MAP@R of 60,502 × 512 clustered unit
  embeddings in 11,316 classes (benchmarks/retrieval_eval.py's ``sop`` scenario), leave-one-out, on the GPU:
  seconds (target < 2 s) and the metrics.

Training steps run as Lightning runs them (``training_loss``, backward, optimizer step, under
``torch.autocast`` for bf16-mixed) in a plain loop, so the numbers exclude Lightning's per-step overhead;
each row times ``--steps`` steps after ``--warmup`` steps, with the device synchronised around them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader

from benchmarks.input_pipeline import write_dataset
from benchmarks.retrieval_eval import clustered_embeddings, make_scenario, shuffled, skewed_sizes
from benchmarks.runner import CONFIGS, RESULTS
from lightning_dml.data import CUB200, ClassBalanced
from lightning_dml.data.cache import prepare_cache
from lightning_dml.data.datamodule import collate_items
from lightning_dml.data.transforms import Transforms
from lightning_dml.methods import RetrievalModule
from lightning_dml.metrics import retrieval_metrics

#: Sizes of the real check and of the toy one (tests, CPU); ``images`` of the cache row's generated tree and
#: its P × K batches (``classes``, ``per_class``).
SIZES = {
    "full": {"image": 224, "batch": 128, "deml_image": 227, "deml_batch": 26, "images": 2000, "classes": 16},
    "toy": {"image": 32, "batch": 4, "deml_image": 64, "deml_batch": 4, "images": 64, "classes": 2},
}


def recipe_model(config: str, **backbone_args: Any) -> tuple[RetrievalModule, bool]:
    """The model of a recipe under configs/, built from its ``model`` section with ``backbone_args`` laid over
    the backbone's (``pretrained: false``: no download), and whether the recipe trains in bf16-mixed."""
    recipe = yaml.safe_load((CONFIGS / config).read_text())
    spec = recipe["model"]
    spec["init_args"]["backbone"]["init_args"].update(backbone_args)
    parser = ArgumentParser()
    parser.add_subclass_arguments(RetrievalModule, "model")
    model = parser.instantiate(parser.parse_object({"model": spec})).model
    return model, recipe["trainer"].get("precision") == "bf16-mixed"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(
    model: RetrievalModule,
    batches: Iterator[dict[str, Any]],
    device: torch.device,
    bf16: bool,
    warmup: int,
    steps: int,
) -> float:
    """Mean wall-clock seconds of a training step (next batch, loss, backward, optimizer step) of ``model``
    on ``device``, in bf16 autocast if ``bf16``, over ``steps`` steps after ``warmup`` untimed ones."""
    model.to(device).train()
    model.configure_model()
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    start = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        for step in range(warmup + steps):
            if step == warmup:
                synchronize(device)
                start = time.perf_counter()
            batch = next(batches)
            with autocast:
                loss = model.training_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def synthetic_batch(size: int, image: int, device: torch.device, per_class: int = 2) -> dict[str, Any]:
    """A batch of ``size`` random normalised images, ``per_class`` per class, already on ``device``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, image, image, generator=generator)
    labels = torch.arange(size) // per_class
    return {"image": images.to(device), "label": labels.to(device)}


def resnet50_rows(sizes: dict[str, int], device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Seconds per step and img/s of the ResNet-50 recipe's training step in float32, bf16-mixed, and
    bf16-mixed + channels_last."""
    batch = synthetic_batch(sizes["batch"], sizes["image"], device, per_class=8)
    rows = {}
    for name, bf16, channels_last in [
        ("ResNet-50 MS, float32", False, False),
        ("ResNet-50 MS, bf16-mixed", True, False),
        ("ResNet-50 MS, bf16-mixed + channels_last", True, True),
    ]:
        torch.manual_seed(0)
        model, _ = recipe_model("resnet50_ms.yaml", pretrained=False)
        model.channels_last = channels_last
        seconds = seconds_per_step(model, itertools.repeat(batch), device, bf16, warmup, steps)
        rows[name] = {"seconds_per_step": seconds, "images_per_second": sizes["batch"] / seconds}
    return rows


def loader_batches(datamodule: Any, loader: DataLoader, device: torch.device) -> Iterator[dict[str, Any]]:
    """Endless training batches of ``loader`` (the data module's uint8 ``loader_view``), moved to ``device``
    and finished there by the data module's ``on_after_batch_transfer``, as a training run gets them."""
    while True:
        for batch in loader:
            moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            yield datamodule.on_after_batch_transfer(moved, 0)


def cache_row(sizes: dict[str, int], device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Seconds per step and img/s of the ResNet-50 recipe's bf16-mixed + channels_last step fed by the cache
    loader of a generated CUB-like tree (loader workers: the CPU cores, at most 8)."""
    with tempfile.TemporaryDirectory() as folder:
        write_dataset(Path(folder, "data"), sizes["images"])
        per_class = sizes["batch"] // sizes["classes"]
        datamodule = CUB200(
            str(Path(folder, "data")),
            cache=str(Path(folder, "cache")),
            allow_partial=True,
            validation=[],
            transforms=Transforms(image_size=sizes["image"], resize=sizes["image"] * 8 // 7),
            sampler=ClassBalanced(classes_per_batch=sizes["classes"], samples_per_class=per_class),
        )
        workers = min(8, len(os.sched_getaffinity(0)))
        prepare_cache(datamodule, sizes["image"] * 8 // 7, workers=workers)
        datamodule.setup("fit")
        loader = DataLoader(
            datamodule.loader_view(datamodule.train_set),
            batch_sampler=datamodule.sampler.batch_sampler(datamodule.train_set.labels, seed=0),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=True,
            collate_fn=collate_items,
        )
        torch.manual_seed(0)
        model, _ = recipe_model("resnet50_ms.yaml", pretrained=False)
        model.channels_last = True
        batches = loader_batches(datamodule, loader, device)
        seconds = seconds_per_step(model, batches, device, True, warmup, steps)
    return {"seconds_per_step": seconds, "images_per_second": sizes["batch"] / seconds}


def deml_row(sizes: dict[str, int], device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Seconds per step and img/s of the DeML release recipe's training step (its precision and memory
    format)."""
    torch.manual_seed(0)
    model, bf16 = recipe_model("deml/release.yaml", weights=None)
    batch = synthetic_batch(sizes["deml_batch"], sizes["deml_image"], device)
    seconds = seconds_per_step(model, itertools.repeat(batch), device, bf16, warmup, steps)
    return {"seconds_per_step": seconds, "images_per_second": sizes["deml_batch"] / seconds}


def evaluation_row(toy: bool, device: torch.device) -> dict[str, Any]:
    """Seconds and metrics of exact leave-one-out retrieval metrics of the SOP-size scenario on ``device``
    (toy: 3,000 × 64 in 600 classes), timed after one warm-up run."""
    if toy:
        generator = torch.Generator().manual_seed(0)
        sizes = skewed_sizes(600, 3000, 2, 12, generator)
        embeddings, labels = shuffled(*clustered_embeddings(sizes, 64, (0.5, 2.5), generator), generator)
        recall_at: tuple[int, ...] = (1, 10, 100)
    else:
        scenario = make_scenario("sop")
        embeddings, labels, recall_at = scenario.queries, scenario.query_labels, scenario.recall_at
    embeddings, labels = embeddings.to(device), labels.to(device)
    retrieval_metrics(embeddings, labels, recall_at=recall_at)
    synchronize(device)
    start = time.perf_counter()
    metrics = retrieval_metrics(embeddings, labels, recall_at=recall_at)
    synchronize(device)
    return {"seconds": time.perf_counter() - start, "items": len(labels), **metrics}


def guarded(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``, or the error it raised (so one failing row leaves the others)."""
    try:
        return measure()
    except Exception as error:  # reported in the results file
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def render(results: dict[str, Any]) -> str:
    """The results as a markdown report."""
    lines = [
        "# GPU check",
        "",
        f"`python -m benchmarks.gpu_check{' --toy' if results['toy'] else ''}` on {results['device']}; "
        f"torch {results['torch']}; {results['steps']} timed steps after {results['warmup']}.",
        "",
        "| training step | img/s | s/step |",
        "|---|---|---|",
    ]
    rows = {} if "error" in results["resnet50_ms"] else dict(results["resnet50_ms"])
    names = {
        "resnet50_ms_cache": "ResNet-50 MS, bf16-mixed + channels_last, cache loader",
        "deml_release": "DeML release",
    }
    rows |= {label: results[key] for key, label in names.items() if "error" not in results[key]}
    for name, row in rows.items():
        lines.append(f"| {name} | {row['images_per_second']:.1f} | {row['seconds_per_step']:.4f} |")
    evaluation = results["sop_evaluation"]
    if "error" not in evaluation:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items() if k not in ("seconds", "items"))
        seconds, items = evaluation["seconds"], evaluation["items"]
        lines += ["", f"Exact evaluation of {items:,} items: {seconds:.2f} s ({metrics})."]
    errors = [
        f"- {name}: {row['error']}"
        for name, row in results.items()
        if isinstance(row, dict) and "error" in row
    ]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else [])) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="tiny sizes (tests, CPU)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of gpu_check.{md,json}")
    options = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SIZES["toy" if options.toy else "full"]
    setting = {
        "toy": options.toy,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.machine()}",
        "torch": torch.__version__,
        "warmup": options.warmup,
        "steps": options.steps,
    }
    rows = {
        "resnet50_ms": guarded(lambda: resnet50_rows(sizes, device, options.warmup, options.steps)),
        "resnet50_ms_cache": guarded(lambda: cache_row(sizes, device, options.warmup, options.steps)),
        "deml_release": guarded(lambda: deml_row(sizes, device, options.warmup, options.steps)),
        "sop_evaluation": guarded(lambda: evaluation_row(options.toy, device)),
    }
    results = setting | rows
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    report = render(results)
    (options.out / "gpu_check.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
