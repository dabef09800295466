"""Exactness under near-ties and ties: lightning_dml's metrics against a float64 brute force and PML.

    python -m benchmarks.exactness

Data (seeded):

- ``2-D circle``: 6,000 L2-normalised 2-D points in 10 classes (angles around 10 centres, σ 0.6 rad),
  exact duplicates removed, so the float64 order has no ties: neighbours differ by ~1e-7 in cosine, below
  float32's resolution near 1.
- ``2-D far``: 1,500 such points moved to (100, -70), Euclidean: |g|² ≈ 1.5e4 hides their differences
  in float32's 2<q, g> - |g|².
- ``collapsed``: 1,000 identical points in 10 classes of 100: every order is equally likely, so the
  expected recall@K has a closed form, 1 - C(900, K) / C(999, K) (the reference row).

Rows: the float64 reference (every row of the full score matrix sorted), ``lightning_dml`` with both
backends, and pytorch-metric-learning's ``AccuracyCalculator`` (its own k-NN) where it reports the metric.
Writes ``results/exactness.md``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from benchmarks.runner import RESULTS
from lightning_dml.metrics import retrieval_metrics

KS = (1, 2, 4, 8)
COLUMNS = [*(f"recall@{k}" for k in KS), "map@r"]


def circle(n: int, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit 2-D points around 10 class angles (moved by ``offset``), exact duplicates dropped."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=generator)
    angle = labels * (2 * math.pi / 10) + 0.6 * torch.randn(n, generator=generator)
    points = torch.stack([angle.cos(), angle.sin()], 1).float() + torch.tensor(offset)
    _, inverse = torch.unique(points, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
    return points[first], labels[first]


def float64_reference(points: torch.Tensor, labels: torch.Tensor, metric: str) -> dict[str, float]:
    """Recall@K and MAP@R from fully sorted float64 rows (leave-one-out); ties must not occur."""
    x = points.double()
    if metric == "cosine":
        x = F.normalize(x, dim=1)
        scores = x @ x.T
    else:
        scores = -torch.cdist(x, x).square()
    scores.fill_diagonal_(-math.inf)
    relevant = labels[:, None] == labels[None, :]
    relevant.fill_diagonal_(False)
    ranked = scores.sort(1, descending=True).values
    assert not (ranked[:, 1:-1] == ranked[:, :-2]).any(), "the float64 reference needs a tie-free order"
    hits = relevant.gather(1, scores.argsort(1, descending=True))
    first = hits.byte().argmax(1)
    r = relevant.sum(1)
    position = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    within = hits & (position <= r[:, None])
    average_precision = ((within.cumsum(1) / position) * within).sum(1) / r
    return {f"recall@{k}": float((first < k).double().mean()) for k in KS} | {
        "map@r": float(average_precision.mean())
    }


def collapsed_reference(n: int, per_class: int) -> dict[str, float]:
    """Expected recall@K when all ``n`` points are equal: 1 - C(n - per_class, K) / C(n - 1, K)."""
    others = n - per_class
    return {f"recall@{k}": 1 - math.comb(others, k) / math.comb(n - 1, k) for k in KS}


def pml(points: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """pytorch-metric-learning's precision@1 (= recall@1) and MAP@R (its default k-NN)."""
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    result = calculator.get_accuracy(points, labels)
    return {"recall@1": result["precision_at_1"], "map@r": result["mean_average_precision_at_r"]}


def main() -> None:
    """Run every case and write the table."""
    lines = [
        "# Exactness: near-ties and ties against a float64 brute force",
        "",
        "`python -m benchmarks.exactness`. Leave-one-out; reference rows are exact (module docstring).",
        "",
        f"| data | method | {' | '.join(COLUMNS)} |",
        f"|---|---|{'---|' * len(COLUMNS)}",
    ]
    circle_points, circle_labels = circle(6000)
    far_points, far_labels = circle(1500, (100.0, -70.0))
    collapsed_points, collapsed_labels = torch.ones(1000, 8), torch.arange(1000) % 10
    cases = [
        ("2-D circle (cosine)", circle_points, circle_labels, "cosine", None),
        ("2-D far (euclidean)", far_points, far_labels, "euclidean", None),
        ("collapsed (cosine)", collapsed_points, collapsed_labels, "cosine", collapsed_reference(1000, 100)),
    ]
    for name, points, labels, metric, reference in cases:
        rows = {"float64 reference": reference or float64_reference(points, labels, metric)}
        for backend in ("torch", "faiss"):
            rows[f"lightning_dml ({backend})"] = retrieval_metrics(
                points, labels, recall_at=KS, metric=metric, backend=backend
            )
        if metric == "cosine":
            rows["pytorch-metric-learning"] = pml(points, labels)
        for method, values in rows.items():
            cells = " | ".join(f"{values[c]:.4f}" if c in values else "–" for c in COLUMNS)
            lines.append(f"| {name} | {method} | {cells} |")
            print(lines[-1], flush=True)
    (RESULTS / "exactness.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
