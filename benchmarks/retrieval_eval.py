"""Exact retrieval metrics at benchmark scale: lightning_dml against pytorch-metric-learning and bare faiss.

Scenarios (synthetic, seeded: L2-normalised class centres grouped in 12 super-classes, plus per-class noise
of varying strength, so that metrics are mid-range):

- ``cub``: 5,924 × 512 in 100 classes of 41–60, leave-one-out, Recall@{1,2,4,8}.
- ``inshop``: 14,218 queries against 12,612 gallery items, × 512, 3,985 classes, Recall@{1,10,20,30,40,50}.
- ``sop``: 60,502 × 512 in 11,316 classes of 2–12 (small classes most frequent, as in SOP), leave-one-out,
  Recall@{1,10,100,1000}.
- ``large``: 200,000 × 128 in 2,000 classes of 100, leave-one-out, Recall@{1,10,100,1000}.
- ``nmi``: NMI of k-means with one cluster per class on the ``sop`` embeddings: ours
  (``clustering_metrics``) against ``faiss.Kmeans``, both 20 iterations (pytorch-metric-learning's setting).

Per retrieval scenario, on the same embeddings, the methods run interleaved in each repeat, and each
keeps its best time:

- ``ours/torch``, ``ours/faiss``: ``lightning_dml.metrics.retrieval_metrics`` with either backend.
- ``pml``: ``AccuracyCalculator(k="max_bin_count")`` with its default k-NN (faiss ``IndexFlatL2``), for the
  metrics it shares with ours: precision@1, R-Precision, MAP@R.
- ``faiss``: ``IndexFlatIP`` add + search of the k our faiss backend needs (max of Recall@K's K and R,
  plus one for the query itself): the floor of any exact top-k method.

Peak extra memory: the highest resident set size during the call minus the one before it (Linux
``VmHWM`` after resetting it through ``/proc/self/clear_refs``); unlike tracemalloc, it sees torch and
faiss buffers. The markdown table goes to stdout and ``<out>.md``, all numbers to ``<out>.json``.

    python benchmarks/retrieval_eval.py                       # everything (about 15 min on 2 cores)
    python benchmarks/retrieval_eval.py --scenarios cub,inshop --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import pytorch_metric_learning
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import normalized_mutual_info_score

from lightning_dml.metrics import clustering_metrics, count_relevant, retrieval_metrics
from lightning_dml.metrics.knn import BLOCK_BYTES

PML_NAMES = {
    "precision@1": "precision_at_1",
    "r_precision": "r_precision",
    "map@r": "mean_average_precision_at_r",
}
KMEANS_ITERATIONS = 20
TARGET_VS_FAISS, TARGET_VS_PML, TARGET_DIFFERENCE = 1.0, 0.5, 1e-6


@dataclass
class Scenario:
    """One evaluation set: queries, optional separate gallery, the ranks of Recall@K, default repeats."""

    name: str
    description: str
    queries: torch.Tensor
    query_labels: torch.Tensor
    gallery: torch.Tensor | None
    gallery_labels: torch.Tensor | None
    recall_at: tuple[int, ...]
    repeats: int


def skewed_sizes(n_classes: int, total: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """Class sizes in [low, high] summing to ``total``, P(size = s) ∝ decay^(s - low), most classes small.

    The decay is set by bisection so that the expected mean is ``total / n_classes``; random classes are
    then grown or shrunk by one until the sum is exact.
    """
    values = torch.arange(low, high + 1, dtype=torch.float64)
    lower, upper = 1e-3, 10.0
    for _ in range(60):
        decay = (lower + upper) / 2
        probabilities = decay ** (values - low) / (decay ** (values - low)).sum()
        if (probabilities * values).sum() < total / n_classes:
            lower = decay
        else:
            upper = decay
    sizes = values[torch.multinomial(probabilities, n_classes, replacement=True, generator=generator)].long()
    while (excess := int(sizes.sum()) - total) != 0:
        step = -1 if excess > 0 else 1
        movable = torch.nonzero((sizes + step >= low) & (sizes + step <= high)).flatten()
        sizes[movable[torch.randperm(len(movable), generator=generator)[: abs(excess)]]] += step
    return sizes


def clustered_embeddings(
    sizes: torch.Tensor, dim: int, noise: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings, class by class (``sizes[c]`` rows of class c, in class order) and their labels.

    Class centres are a random super-class direction (12 of them) plus a class-specific one of equal
    scale; each class draws its noise scale log-uniformly in ``noise``, so easy and hard classes mix.
    """
    n_classes = len(sizes)
    super_classes = torch.randn(12, dim, generator=generator)
    centres = super_classes[torch.randint(12, (n_classes,), generator=generator)]
    centres = F.normalize(centres + torch.randn(n_classes, dim, generator=generator), dim=1)
    low, high = math.log(noise[0]), math.log(noise[1])
    class_noise = torch.exp(low + (high - low) * torch.rand(n_classes, generator=generator))
    labels = torch.repeat_interleave(torch.arange(n_classes), sizes)
    noise_rows = torch.randn(len(labels), dim, generator=generator) * (
        class_noise[labels, None] / math.sqrt(dim)
    )
    return F.normalize(centres[labels] + noise_rows, dim=1), labels


def shuffled(
    embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows in a random order (real evaluation sets are not sorted by class)."""
    order = torch.randperm(len(labels), generator=generator)
    return embeddings[order], labels[order]


def make_scenario(name: str) -> Scenario:
    """Build the named scenario's embeddings (seeded, so every run sees the same data)."""
    generator = torch.Generator().manual_seed(0)
    if name == "cub":
        sizes = skewed_sizes(100, 5924, 41, 60, generator)
        embeddings, labels = shuffled(*clustered_embeddings(sizes, 512, (0.9, 3.0), generator), generator)
        return Scenario(name, "5,924 × 512, 100 classes", embeddings, labels, None, None, (1, 2, 4, 8), 3)
    if name in ("sop", "nmi"):
        sizes = skewed_sizes(11316, 60502, 2, 12, generator)
        embeddings, labels = shuffled(*clustered_embeddings(sizes, 512, (0.5, 2.5), generator), generator)
        description = "60,502 × 512, 11,316 classes of 2–12"
        # Best of 2: on a shared VM one run's time varies by about ±10 %.
        return Scenario(name, description, embeddings, labels, None, None, (1, 10, 100, 1000), 2)
    if name == "large":
        sizes = torch.full((2000,), 100)
        embeddings, labels = shuffled(*clustered_embeddings(sizes, 128, (0.8, 2.0), generator), generator)
        description = "200,000 × 128, 2,000 classes of 100"
        return Scenario(name, description, embeddings, labels, None, None, (1, 10, 100, 1000), 1)
    if name == "inshop":
        query_sizes = skewed_sizes(3985, 14218, 1, 8, generator)
        gallery_sizes = skewed_sizes(3985, 12612, 1, 8, generator)
        embeddings, labels = clustered_embeddings(query_sizes + gallery_sizes, 512, (0.5, 2.0), generator)
        # Within each class, the first query_sizes[c] rows are queries and the rest gallery items.
        class_start = torch.cumsum(query_sizes + gallery_sizes, 0) - (query_sizes + gallery_sizes)
        is_query = torch.arange(len(labels)) - class_start[labels] < query_sizes[labels]
        queries, query_labels = shuffled(embeddings[is_query], labels[is_query], generator)
        gallery, gallery_labels = shuffled(embeddings[~is_query], labels[~is_query], generator)
        description = "14,218 queries vs 12,612 gallery × 512, 3,985 classes"
        return Scenario(
            name, description, queries, query_labels, gallery, gallery_labels, (1, 10, 20, 30, 40, 50), 3
        )
    raise SystemExit(f"unknown scenario {name!r}; choose from cub, inshop, sop, large, nmi")


def _reset_peak_memory() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memory_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(function: Callable[[], object]) -> tuple[object, float, float | None]:
    """Run ``function``; return ``(result, seconds, peak extra resident memory in MiB or None)``.

    Free heap memory is first handed back to the system (glibc ``malloc_trim``), so that a method whose
    buffers reuse memory freed by the one before still shows them as growth.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _memory_kib("VmRSS")
    peak_known = _reset_peak_memory()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = (_memory_kib("VmHWM") - baseline) / 1024 if peak_known else None
    return result, seconds, peak


def methods(scenario: Scenario) -> dict[str, tuple[Callable[[], dict[str, float]], int]]:
    """The four contenders of a retrieval scenario: name -> (call returning metrics, k it searches)."""
    leave_one_out = scenario.gallery is None
    gallery = scenario.queries if leave_one_out else scenario.gallery
    gallery_labels = scenario.query_labels if leave_one_out else scenario.gallery_labels
    ids = torch.arange(len(scenario.query_labels)) if leave_one_out else None
    relevant = count_relevant(scenario.query_labels, gallery_labels, ids, ids)
    k_needed = max(max(scenario.recall_at), int(relevant.max()))
    faiss_k = k_needed + int(leave_one_out)
    gallery_pair = () if leave_one_out else (scenario.gallery, scenario.gallery_labels)

    def ours(backend: str) -> Callable[[], dict[str, float]]:
        return lambda: retrieval_metrics(
            scenario.queries,
            scenario.query_labels,
            *gallery_pair,
            recall_at=scenario.recall_at,
            backend=backend,
        )

    def pml() -> dict[str, float]:
        calculator = AccuracyCalculator(
            include=tuple(PML_NAMES.values()), k="max_bin_count", device=torch.device("cpu")
        )
        if leave_one_out:
            result = calculator.get_accuracy(scenario.queries, scenario.query_labels)
        else:
            result = calculator.get_accuracy(
                scenario.queries, scenario.query_labels, *gallery_pair, ref_includes_query=False
            )
        return {ours_name: result[theirs] for ours_name, theirs in PML_NAMES.items()}

    def bare_faiss() -> dict[str, float]:
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery.numpy())
        index.search(scenario.queries.numpy(), faiss_k)
        return {}

    return {
        "ours/torch": (ours("torch"), int(relevant.max())),
        "ours/faiss": (ours("faiss"), faiss_k),
        "pml": (pml, int(torch.bincount(gallery_labels).max())),
        "faiss": (bare_faiss, faiss_k),
    }


def run_retrieval(scenario: Scenario, repeats: int) -> dict:
    """Time every method ``repeats`` times, interleaved; keep best time, largest peak, last metrics."""
    contenders = methods(scenario)
    rows = {name: {"times": [], "peaks": [], "k": k, "metrics": {}} for name, (_, k) in contenders.items()}
    for _ in range(repeats):
        for name, (function, _) in contenders.items():
            metrics, seconds, peak = measure(function)
            rows[name]["times"].append(seconds)
            rows[name]["peaks"].append(peak)
            rows[name]["metrics"] = metrics
            print(f"  {scenario.name:7s} {name:11s} {seconds:8.2f} s", flush=True)
    pml_metrics = rows["pml"]["metrics"]
    for row in rows.values():
        row["time"] = min(row["times"])
        row["peak_mib"] = None if None in row["peaks"] else max(row["peaks"])
        shared = [
            abs(row["metrics"][name] - pml_metrics[name]) for name in PML_NAMES if name in row["metrics"]
        ]
        row["max_diff_vs_pml"] = max(shared) if shared else None
    torch_metrics, faiss_metrics = rows["ours/torch"]["metrics"], rows["ours/faiss"]["metrics"]
    return {
        "description": scenario.description,
        "recall_at": scenario.recall_at,
        "repeats": repeats,
        "methods": rows,
        "max_diff_torch_vs_faiss_backend": max(
            abs(torch_metrics[n] - faiss_metrics[n]) for n in torch_metrics
        ),
        "memory_formula_mib": memory_formula_mib(scenario, rows["ours/torch"]["k"]),
    }


def memory_formula_mib(scenario: Scenario, depth: int) -> float:
    """Our torch backend's extra memory by its formula (``ranking.rank``), in MiB.

    4·D·(Ng + Nq') bytes for the normalised copies (Nq' = 0 in leave-one-out), the 256 MiB score block
    and at most as much again for the rows it re-examines, and 26 bytes per query and listed item
    (k = max R + 4: positions, float32 and float64 scores, hit flags).
    """
    gallery = scenario.queries if scenario.gallery is None else scenario.gallery
    copies = gallery.numel() + (0 if scenario.gallery is None else scenario.queries.numel())
    return (4 * copies + 2 * BLOCK_BYTES + 26 * len(scenario.queries) * (depth + 4)) / 2**20


def run_nmi(scenario: Scenario) -> dict:
    """NMI and time of our k-means (``clustering_metrics``) and of ``faiss.Kmeans`` on the same points."""
    points, labels = scenario.queries, scenario.query_labels
    n_clusters = len(torch.unique(labels))
    ours, ours_seconds, ours_peak = measure(lambda: clustering_metrics(points, labels, seed=0))

    def faiss_nmi() -> float:
        kmeans = faiss.Kmeans(points.shape[1], n_clusters, niter=KMEANS_ITERATIONS, seed=0)
        kmeans.train(points.numpy())
        _, assignments = kmeans.index.search(points.numpy(), 1)
        return float(normalized_mutual_info_score(labels.numpy(), assignments[:, 0]))

    faiss_value, faiss_seconds, faiss_peak = measure(faiss_nmi)
    print(f"  nmi     ours {ours_seconds:8.2f} s   faiss {faiss_seconds:8.2f} s", flush=True)
    return {
        "description": f"{scenario.description}, {n_clusters} clusters, {KMEANS_ITERATIONS} iterations",
        "ours": {"nmi": ours["nmi"], "f1": ours["f1"], "time": ours_seconds, "peak_mib": ours_peak},
        "faiss": {"nmi": faiss_value, "time": faiss_seconds, "peak_mib": faiss_peak},
    }


def _verdict(value: float | None, limit: float) -> str:
    """``0.42× ✓`` when ``value <= limit``, ``1.52× ✗`` otherwise."""
    return "n/a" if value is None else f"{value:.2f}× {'✓' if value <= limit else '✗'}"


def render(results: dict, environment: dict) -> str:
    """The markdown report: retrieval table, target verdicts, metric values, NMI table."""
    lines = [
        "# Exact retrieval evaluation: lightning_dml vs pytorch-metric-learning vs faiss",
        "",
        f"Machine: {environment['cpu']}, {environment['cores']} cores; threads: torch "
        f"{environment['torch_threads']}, faiss {environment['faiss_threads']}; torch "
        f"{environment['torch']}, faiss {environment['faiss']}, pytorch-metric-learning "
        f"{environment['pml']}. "
        f"CPU pressure (other processes) at start / end: {environment['pressure_start']} / "
        f"{environment['pressure_end']}. Total run time {environment['total_seconds']:.0f} s.",
        "",
        "Time: best of the repeats (methods interleaved). k: the top-k list a method searches; ours/torch "
        "keeps no top-k list for Recall@K, only the first max R + 4 items (k shown: max R) and counts. "
        "Peak: extra resident memory during the call. Δ: largest absolute difference from PML over "
        "precision@1, R-Precision, MAP@R.",
        "",
        "| scenario | method | k | time (s) | ÷ faiss (≤ 1.0) | ÷ PML (≤ 0.5) | peak extra (MiB) "
        "| Δ vs PML |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if name == "nmi":
            continue
        rows = result["methods"]
        for method, row in rows.items():
            versus_faiss = row["time"] / rows["faiss"]["time"] if method != "faiss" else None
            versus_pml = row["time"] / rows["pml"]["time"] if method.startswith("ours") else None
            difference = "–" if row["max_diff_vs_pml"] is None else f"{row['max_diff_vs_pml']:.1e}"
            peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            lines.append(
                f"| {name} ({result['description']}, ×{result['repeats']}) | {method} | {row['k']} | "
                f"{row['time']:.2f} | {_verdict(versus_faiss, TARGET_VS_FAISS)} | "
                f"{_verdict(versus_pml, TARGET_VS_PML)} | {peak} | {difference} |"
            )
    lines += ["", "Targets for ours/torch (time ratios, Δ ≤ 1e-6 vs PML, both backends equal):", ""]
    for name, result in results.items():
        if name == "nmi":
            continue
        rows = result["methods"]
        ours = rows["ours/torch"]
        checks = [
            ("time ≤ 1.0 × faiss", ours["time"] <= TARGET_VS_FAISS * rows["faiss"]["time"]),
            ("time ≤ 0.5 × PML", ours["time"] <= TARGET_VS_PML * rows["pml"]["time"]),
            ("Δ vs PML ≤ 1e-6", ours["max_diff_vs_pml"] <= TARGET_DIFFERENCE),
            ("torch = faiss backend", result["max_diff_torch_vs_faiss_backend"] <= TARGET_DIFFERENCE),
        ]
        verdicts = ", ".join(f"{label}: {'met' if passed else 'NOT met'}" for label, passed in checks)
        lines.append(
            f"- {name}: {verdicts} (torch vs faiss backend max |Δ| "
            f"{result['max_diff_torch_vs_faiss_backend']:.1e}; memory formula "
            f"{result['memory_formula_mib']:.0f}"
            f" MiB, measured {ours['peak_mib']:.0f} MiB)"
        )
    lines += ["", "Metric values (ours/torch; PML's shared values agree to the Δ above):", ""]
    for name, result in results.items():
        if name != "nmi":
            values = ", ".join(f"{k} {v:.4f}" for k, v in result["methods"]["ours/torch"]["metrics"].items())
            lines.append(f"- {name}: {values}")
    if "nmi" in results:
        nmi = results["nmi"]
        lines += [
            "",
            f"NMI ({nmi['description']}):",
            "",
            "| method | NMI | time (s) | peak extra (MiB) |",
            "|---|---|---|---|",
            f"| ours (clustering_metrics, torch k-means) | {nmi['ours']['nmi']:.4f} | "
            f"{nmi['ours']['time']:.1f} "
            f"| {nmi['ours']['peak_mib']:.0f} |",
            f"| faiss.Kmeans + index search | {nmi['faiss']['nmi']:.4f} | {nmi['faiss']['time']:.1f} "
            f"| {nmi['faiss']['peak_mib']:.0f} |",
        ]
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the machine architecture elsewhere)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")


def cpu_pressure() -> str:
    """Share of the last 60 s in which some runnable task waited for a CPU (Linux PSI), e.g. ``3%``."""
    try:
        first_line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"
    return first_line.split()[2].split("=")[1] + "%"


def write_report(out: Path, report: str, environment: dict, results: dict) -> None:
    """Print the markdown ``report`` and write it to ``out.md``, every number to ``out.json``."""
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(report)
    out.with_suffix(".json").write_text(
        json.dumps({"environment": environment, "results": results}, indent=2)
    )


def main() -> None:
    """Parse the flags, run the chosen scenarios, print and write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default="cub,inshop,sop,large,nmi", help="comma-separated names")
    parser.add_argument(
        "--repeats", type=int, help="repeats of every scenario (default: cub, inshop 3; sop 2; large 1)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and faiss threads")
    parser.add_argument("--out", default="benchmarks/results/retrieval_eval", help="output path stem")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    faiss.omp_set_num_threads(arguments.threads)
    environment = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "pml": pytorch_metric_learning.__version__,
        "pressure_start": cpu_pressure(),
    }
    start = time.perf_counter()
    results = {}
    for name in arguments.scenarios.split(","):
        scenario = make_scenario(name)
        print(f"{name}: {scenario.description}", flush=True)
        if name == "nmi":
            results[name] = run_nmi(scenario)
        else:
            results[name] = run_retrieval(scenario, arguments.repeats or scenario.repeats)
    environment |= {"pressure_end": cpu_pressure(), "total_seconds": time.perf_counter() - start}
    report = render(results, environment)
    write_report(Path(arguments.out), report, environment, results)


if __name__ == "__main__":
    main()
