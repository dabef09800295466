"""Sharded exact evaluation, 1, 2 and 4 processes (gloo on CPU): equal metrics, per-rank peak memory, time.

SOP size by default: 60,502 × 512 clustered unit embeddings in 11,316 classes of 2–12, leave-one-out,
Recall@{1, 10, 100, 1000}, precision@1, R-Precision and MAP@R. Every process takes the rows r, r + W, … (a
``DistributedSampler`` without shuffling) and runs ``metrics.sharded.sharded_rank`` and the gathered means,
as ``RetrievalEvaluation(sharded=True)`` does under DDP. The reference row is the default path: one process
ranking the whole set (``retrieval_metrics``). Reported per row: the metrics (checked identical to the
reference's), the wall time of the slowest rank, and each rank's peak extra resident memory during the
evaluation (``retrieval_eval.measure``: VmHWM reset, minus the resident memory before).

    python -m benchmarks.sharded_eval                                   # SOP size, 1, 2 and 4 processes
    python -m benchmarks.sharded_eval --items 3000 --classes 600 --out /tmp/sharded_smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.retrieval_eval import (
    clustered_embeddings,
    cpu_model,
    cpu_pressure,
    measure,
    shuffled,
    skewed_sizes,
    write_report,
)
from lightning_dml.metrics import metrics_from_ranking, retrieval_metrics
from lightning_dml.metrics.sharded import gather_ranking, sharded_rank

RECALL_AT = (1, 10, 100, 1000)
#: Environment variable that makes a 1-process run use the gathered path (``metrics.ranking.rank``).
GATHERED = "SHARDED_EVAL_GATHERED"


def make_data(items: int, classes: int, dim: int, folder: Path) -> tuple[Path, Path]:
    """The SOP-like embeddings and labels (seeded), saved as ``.npy`` for the processes to map."""
    generator = torch.Generator().manual_seed(0)
    sizes = skewed_sizes(classes, items, 2, 12, generator)
    embeddings, labels = shuffled(*clustered_embeddings(sizes, dim, (0.5, 2.5), generator), generator)
    paths = folder / "embeddings.npy", folder / "labels.npy"
    np.save(paths[0], embeddings.numpy())
    np.save(paths[1], labels.numpy())
    return paths


def evaluate(embeddings: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    """This rank's share ranked against every rank's share, leave-one-out, and the gathered means."""
    if GATHERED in os.environ:  # the reference: one process ranks the whole set (``sharded: false``)
        return retrieval_metrics(embeddings, labels, recall_at=RECALL_AT)
    ranking = sharded_rank(embeddings, labels, ids, embeddings, labels, ids)
    gathered, _ = gather_ranking(ranking, labels, ids)
    return metrics_from_ranking(gathered, RECALL_AT)


def _worker(rank: int, world_size: int, threads: int, data: tuple[str, str], folder: str) -> None:
    torch.set_num_threads(threads)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size)
    mapped = np.load(data[0], mmap_mode="r")
    rows = np.arange(rank, len(mapped), world_size)
    embeddings = torch.from_numpy(np.ascontiguousarray(mapped[rows]))
    labels = torch.from_numpy(np.load(data[1])[rows])
    metrics, seconds, peak = measure(lambda: evaluate(embeddings, labels, torch.from_numpy(rows)))
    row = {"rank": rank, "seconds": seconds, "peak_mib": peak, "shard_mib": embeddings.nbytes / 2**20}
    rows_of_all = [row]
    if world_size > 1:
        rows_of_all = [None] * world_size
        dist.all_gather_object(rows_of_all, row)
        dist.destroy_process_group()
    if rank == 0:
        Path(folder, "result.json").write_text(json.dumps({"metrics": metrics, "ranks": rows_of_all}))


def run(world_size: int, threads: int, data: tuple[Path, Path]) -> dict:
    """One evaluation with ``world_size`` processes: rank 0's metrics and every rank's time and memory."""
    with tempfile.TemporaryDirectory() as folder:
        arguments = (world_size, threads, tuple(map(str, data)), folder)
        start = time.perf_counter()
        mp.spawn(_worker, arguments, nprocs=world_size)
        result = json.loads(Path(folder, "result.json").read_text())
    return result | {"wall_seconds": time.perf_counter() - start}


def render(results: dict[str, dict], environment: dict) -> str:
    """The markdown report."""
    reference = next(iter(results.values()))["metrics"]
    lines = [
        "# Sharded exact evaluation: 1, 2 and 4 gloo processes on CPU",
        "",
        f"{environment['description']}; {environment['cpu']}, {environment['cores']} cores, "
        f"{environment['threads']} torch threads in all; torch {environment['torch']}. CPU pressure (other "
        f"processes) at start / end: {environment['pressure_start']} / {environment['pressure_end']}.",
        "",
        "Time: the slowest rank's evaluation (and the whole run with process start-up). Peak: each rank's",
        "extra resident memory during the evaluation; shard: its share of the float32 embeddings.",
        "",
        "| processes, path | metrics equal to the gathered path | eval time (s) | run time (s) | "
        "peak extra per rank (MiB) | shard per rank (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        ranks = result["ranks"]
        peaks = ", ".join("n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}" for r in ranks)
        lines.append(
            f"| {name} | {'yes' if result['metrics'] == reference else 'NO'} | "
            f"{max(r['seconds'] for r in ranks):.2f} | {result['wall_seconds']:.1f} | {peaks} | "
            f"{ranks[0]['shard_mib']:.0f} |"
        )
    values = ", ".join(f"{name} {value:.4f}" for name, value in reference.items())
    lines += ["", f"Metrics: {values}.", ""]
    return "\n".join(lines)


def main() -> None:
    """Parse the flags, run every process count, print and write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads over all processes"
    )
    parser.add_argument("--out", default="benchmarks/results/sharded_eval", help="output path stem")
    arguments = parser.parse_args()
    environment = {
        "description": f"{arguments.items:,} × {arguments.dim}, {arguments.classes:,} classes of 2–12, "
        "leave-one-out",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": arguments.threads,
        "torch": torch.__version__,
        "pressure_start": cpu_pressure(),
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        data = make_data(arguments.items, arguments.classes, arguments.dim, Path(folder))
        os.environ[GATHERED] = "1"
        results["1, gathered (`rank`)"] = run(1, arguments.threads, data)
        del os.environ[GATHERED]
        for world_size in arguments.processes:
            results[f"{world_size}, sharded"] = run(world_size, max(1, arguments.threads // world_size), data)
            print(f"{world_size} processes: {results[f'{world_size}, sharded']['ranks']}", flush=True)
    environment["pressure_end"] = cpu_pressure()
    report = render(results, environment)
    write_report(Path(arguments.out), report, environment, results)


if __name__ == "__main__":
    main()
