"""Where the zero-shot information lives: the embedding against layer readouts and raw pixels.

    python -m benchmarks.readouts [--seeds 0 1 2] [--epochs 2]

Writes benchmarks/results/readouts.md and .json. Fashion-MNIST, classes 0–4 train → the 5,000 test-file
images of classes 5–9, leave-one-out. The untrained network (``lightning-dml test``) and the trained one
(``lightning-dml fit`` on configs/readouts/fashion_mnist.yaml, no validation, last weights tested) are each
scored three ways by one evaluation: the embedding (the head's output), and the readouts of the last conv
block (7×7 map, 128 channels) globally averaged (``gap``, 128-d) and averaged to a 7×7 grid (``grid7``,
6,272-d). Raw pixels: the test images as mean-centred vectors, by the same metric functions.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.runner import DATASETS, Entry, cli_entry, paired_difference, run_grid, save
from lightning_dml.data import FashionMNIST
from lightning_dml.metrics import retrieval_metrics

CONFIG = str(Path(__file__).parents[1] / "configs/readouts/fashion_mnist.yaml")
METRICS = ["recall@1", "map@r"]
#: Table label of each representation and the prefix of its test metrics.
REPRESENTATIONS = {"embedding": "", "GAP of the last block": "gap/", "7×7 grid of the last block": "grid7/"}


@functools.cache
def pixel_metrics() -> dict[str, float]:
    """Metrics of the mean-centred pixel vectors of the test set (the eval transform is affine, so this
    equals raw pixels)."""
    data = FashionMNIST(root=DATASETS, validation=[])
    data.setup("test")
    test = data.test_set
    pixels = torch.stack([test[i]["image"] for i in range(len(test))]).flatten(1)
    return retrieval_metrics(pixels - pixels.mean(dim=0), torch.as_tensor(test.labels), recall_at=(1,))


def split_representations(runs: list[dict[str, float]], prefix: str) -> list[dict[str, float]]:
    """Each run's metrics of one representation (its ``prefix``), named as the embedding's."""
    return [{metric: run[prefix + metric] for metric in METRICS} for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--overlay", nargs="+", default=[], help="configs laid over the recipe, in order")
    parser.add_argument("--out", default="readouts", help="results file stem under benchmarks/results/")
    options = parser.parse_args()
    torch.set_num_threads(1)  # other jobs share the 2 cores
    base = [
        "--config",
        CONFIG,
        *(argument for overlay in options.overlay for argument in ("--config", overlay)),
        "--data.init_args.root",
        DATASETS,
        "--data.init_args.validation",
        "[]",
        "--checkpoint.monitor",
        "null",
        "--evaluation.clustering",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    networks = {
        "untrained network": cli_entry("untrained", "test", *base),
        "trained network": cli_entry("trained", "fit", *base, "--trainer.max_epochs", str(options.epochs)),
    }
    entries = [Entry("raw pixels", lambda seed: pixel_metrics()), *networks.values()]
    runs = run_grid(entries, options.seeds)
    results = {"raw pixels (no seed dependence)": runs["raw pixels"]}
    for network, entry in networks.items():
        for label, prefix in REPRESENTATIONS.items():
            results[f"{network}: {label}"] = split_representations(runs[entry.name], prefix)
    grid, embedding = "trained network: 7×7 grid of the last block", "trained network: embedding"
    results["trained grid − raw pixels"] = [
        {metric: run[metric] - runs["raw pixels"][0][metric] for metric in METRICS} for run in results[grid]
    ]
    results["trained grid − trained embedding, same seed"] = paired_difference(
        results, grid, embedding, METRICS
    )
    minutes = {
        name: statistics.fmean(run["seconds"] for run in runs[entry.name]) / 60
        for name, entry in networks.items()
    }
    seeds = " ".join(map(str, options.seeds))
    overlays = " ".join(options.overlay)
    extra = f" --overlay {overlays} --out {options.out}" if overlays else ""
    loss = f"binomial deviance, or what {overlays} set instead" if overlays else "binomial deviance"
    header = (
        "# Readouts: Fashion-MNIST 0–4 → unseen 5–9 (5,000 test images), leave-one-out\n\n"
        f"`python -m benchmarks.readouts --seeds {seeds} --epochs {options.epochs}{extra}` on "
        f"{platform.processor() or 'CPU'}, 1 thread (2 cores shared with other jobs). Network "
        f"(configs/readouts/fashion_mnist.yaml): SmallCNN 32-64-128 + linear 128-d head, {loss}, "
        f"Adam 1e-3, {options.epochs} epochs of the 30,000 training images in batches of 60 (5 classes × "
        f"12), no validation, last weights tested. Mean ± 95% CI over {len(options.seeds)} seeds; the seeds "
        "vary the network's initialisation and the training batches (pixels have no seed). Readouts of the "
        "last conv block's 7×7 map: GAP = global average (128-d); 7×7 grid = flattened (6,272-d, under the "
        "8,192-d projection threshold, so not projected). Minutes per run: untrained "
        f"{minutes['untrained network']:.1f} (evaluation only), trained {minutes['trained network']:.1f}."
    )
    print(save(options.out, header, results, METRICS))


if __name__ == "__main__":
    main()
