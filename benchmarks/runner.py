"""Shared runner for method comparisons: a grid of entries × seeds → a table of mean ± 95% CI.

An entry is a name and a function of the seed that returns test metrics; :func:`cli_entry` makes one from
``lightning-dml`` arguments, so every method is compared through the same CLI, data and evaluation.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from lightning_dml.cli import DMLCLI

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).parents[1] / "configs"
#: ``../shared/datasets`` beside the checkout, where the benchmarks read their data.
DATASETS = str(Path(__file__).parents[2] / "shared/datasets")


@dataclass
class Entry:
    """A row of the comparison: ``run(seed)`` returns ``{metric: value}`` on the test set."""

    name: str
    run: Callable[[int], dict[str, float]]


def stack(*configs: str) -> list[str]:
    """``--config`` arguments for ``configs`` (paths below configs/), in order."""
    return [item for config in configs for item in ("--config", str(CONFIGS / config))]


def cli_entry(name: str, subcommand: str, *args: str) -> Entry:
    """An entry that runs ``lightning-dml SUBCOMMAND ARGS --seed_everything SEED`` and reads ``test/*``.

    ``fit`` ends with ``test`` on the best checkpoint; ``test`` alone evaluates the untrained network.
    """

    def run(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as runs:
            return test_results(run_cli(subcommand, list(args), seed, runs))

    return Entry(name, run)


def run_cli(subcommand: str, args: list[str], seed: int, runs: str) -> DMLCLI:
    """Run ``lightning-dml SUBCOMMAND ARGS`` quietly with the seed, logging under ``runs``."""
    return DMLCLI(
        args=[
            subcommand,
            *args,
            "--seed_everything",
            str(seed),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            runs,
        ]
    )


def test_results(cli: DMLCLI) -> dict[str, float]:
    """The run's ``test/*`` metrics, without the prefix."""
    metrics = cli.trainer.callback_metrics
    return {key.removeprefix("test/"): float(v) for key, v in metrics.items() if key.startswith("test/")}


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def run_grid(entries: Sequence[Entry], seeds: Sequence[int]) -> dict[str, list[dict[str, float]]]:
    """Run every entry for every seed; return each entry's per-seed metrics (with ``seconds``)."""
    results = {}
    for entry in entries:
        results[entry.name] = []
        for seed in seeds:
            start = time.perf_counter()
            metrics = entry.run(seed)
            results[entry.name].append(metrics | {"seconds": time.perf_counter() - start})
            print(f"{entry.name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return results


def table(results: dict[str, list[dict[str, float]]], metrics: Sequence[str]) -> str:
    """A markdown table of mean ± 95% CI per entry and metric."""
    lines = ["| entry | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, runs in results.items():
        cells = []
        for metric in metrics:
            values = [run[metric] for run in runs if metric in run]
            if not values:
                cells.append("–")
                continue
            mean, half = confidence_interval(values)
            cells.append(f"{mean:.4f} ± {half:.4f}" if metric != "seconds" else f"{mean:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(
    results: dict[str, list[dict[str, float]]], minuend: str, subtrahend: str, metrics: Sequence[str]
) -> list[dict[str, float]]:
    """Per-seed differences ``minuend - subtrahend``: the fair comparison when seeds vary a lot."""
    return [
        {metric: a[metric] - b[metric] for metric in metrics if metric != "seconds"}
        for a, b in zip(results[minuend], results[subtrahend], strict=True)
    ]


def save(name: str, header: str, results: dict[str, list[dict[str, float]]], metrics: Sequence[str]) -> str:
    """Write ``results/NAME.md`` (header and table) and ``results/NAME.json`` (per-seed values)."""
    text = f"{header}\n\n{table(results, metrics)}\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    return text
