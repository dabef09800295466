"""The quickstart's unseen-class metrics next to the same network untrained and next to raw pixels.

    python -m benchmarks.quickstart [--seeds 0 1 2]

Writes benchmarks/results/quickstart.md. Raw pixels: the test images (digits 5–9) as vectors, mean-centred,
compared by cosine similarity, evaluated by the same metric functions.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from benchmarks.runner import Entry, cli_entry, paired_difference, run_grid, save
from lightning_dml.data import Digits
from lightning_dml.metrics import clustering_metrics, retrieval_metrics

CONFIG = str(Path(__file__).parents[1] / "configs/quickstart.yaml")
METRICS = ["precision@1", "r_precision", "map@r", "nmi", "f1", "seconds"]


def raw_pixels(seed: int) -> dict[str, float]:
    """Metrics of the mean-centred pixel vectors of the quickstart's test set (no randomness: seed unused)."""
    data = Digits(validation=[])
    data.setup()
    pixels = torch.stack([data.test_set[i]["image"] for i in range(len(data.test_set))]).flatten(1)
    pixels = pixels - pixels.mean(dim=0)
    labels = data.test_set.labels
    return retrieval_metrics(pixels, labels) | clustering_metrics(pixels, labels, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    seeds = parser.parse_args().seeds
    entries = [
        Entry("raw pixels", raw_pixels),
        cli_entry("untrained network", "test", "--config", CONFIG),
        cli_entry("quickstart (trained)", "fit", "--config", CONFIG),
    ]
    results = run_grid(entries, seeds)
    paired = paired_difference(results, "quickstart (trained)", "untrained network", METRICS)
    results["trained − untrained, same seed"] = paired
    header = (
        "# Quickstart: digits 0–4 → unseen 5–9 (896 test images), leave-one-out\n\n"
        f"`python -m benchmarks.quickstart --seeds {' '.join(map(str, seeds))}` on "
        f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads); mean ± 95% CI over "
        f"{len(seeds)} seeds (network init, batches, k-means)."
    )
    print(save("quickstart", header, results, METRICS))


if __name__ == "__main__":
    main()
