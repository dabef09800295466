"""Seeded k-means (squared euclidean) in torch, sized for clustering metrics on retrieval test sets.

Why hand-written: clustering metrics use one cluster per class, so SOP's test set asks for 11,316 clusters
of 60,502 points in 512-d. scikit-learn's ``KMeans`` seeds with greedy k-means++, a sequential pass over
all points for each of the 11,316 centres (with 2 + log k candidates each), then repeats the fit
``n_init`` times; at that size it takes far longer than the retrieval metrics. Here:

- Seeding is scikit-learn's greedy k-means++ rule (each new centre is the best of ``2 + ln k`` candidates
  drawn with probability proportional to the squared distance to the nearest centre so far, "best" being
  the lowest resulting sum of squared distances), but drawn in at most ``SEEDING_ROUNDS`` batches of
  centres, so that each round is one chunked matrix product instead of one pass per centre.
- Lloyd iterations assign points in chunks with one matrix product per chunk (``chunk × k`` block under
  ``block_bytes``) and stop when no assignment changes or after ``max_iter`` iterations.
- An empty cluster is moved to the point farthest from its centre, one point per empty cluster.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_dml.errors import DataError
from lightning_dml.metrics.knn import BLOCK_BYTES

#: Seeding draws its centres in at most this many batches.
SEEDING_ROUNDS = 32


def kmeans(
    points: Tensor,
    n_clusters: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 20,
    seeding_trials: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[Tensor, float]:
    """Cluster ``points`` ``(N, D)`` into ``n_clusters``; return ``(assignments (N,) long, inertia)``.

    Inertia is the sum of squared distances to the assigned centres; of ``n_init`` runs (seeds ``seed``,
    ``seed + 1``, …) the one with the lowest inertia is returned. Deterministic for a given ``seed``.
    ``seeding_trials`` candidates are tried per seeded centre (default ``2 + ln(n_clusters)``).
    """
    if not 1 <= n_clusters <= len(points):
        raise DataError(f"n_clusters must be between 1 and the {len(points)} points, got {n_clusters}")
    if seeding_trials is None:
        seeding_trials = 2 + int(math.log(n_clusters))  # as scikit-learn's greedy k-means++
    best_assignments, best_inertia = None, float("inf")
    for run in range(n_init):
        generator = torch.Generator(device=points.device).manual_seed(seed + run)
        centres = _seed_centres(points, n_clusters, generator, block_bytes, seeding_trials)
        assignments, inertia = _lloyd(points, centres, max_iter, block_bytes)
        if inertia < best_inertia:
            best_assignments, best_inertia = assignments, inertia
    return best_assignments, best_inertia


def _nearest(points: Tensor, centres: Tensor, block_bytes: int) -> tuple[Tensor, Tensor]:
    """``(index of the nearest centre, squared distance to it)`` for every point, in chunks."""
    chunk_size = max(1, block_bytes // (len(centres) * points.element_size()))
    centre_sq = centres.square().sum(1)
    indices, distances = [], []
    for chunk in points.split(chunk_size):
        # argmin |x - c|² = argmax 2<x, c> - |c|²; |x|² is added back for the distance itself.
        best, index = torch.addmm(centre_sq, chunk, centres.T, alpha=2, beta=-1).max(1)
        indices.append(index)
        distances.append((chunk.square().sum(1) - best).clamp_(min=0))
    return torch.cat(indices), torch.cat(distances)


def _seed_centres(
    points: Tensor, n_clusters: int, generator: torch.Generator, block_bytes: int, trials: int
) -> Tensor:
    """Batched greedy D² sampling (module docstring): ``n_clusters`` initial centres among ``points``."""
    chosen = torch.randint(len(points), (1,), generator=generator, device=points.device)
    distances = _nearest(points, points[chosen], block_bytes)[1]
    batch = -(-(n_clusters - 1) // SEEDING_ROUNDS)
    while len(chosen) < n_clusters:
        size = min(batch, n_clusters - len(chosen))
        weights = distances.clone()
        weights[chosen] = 0
        if int((weights > 0).sum()) < size * trials:  # too few distinct points left: draw uniformly
            weights = torch.ones_like(distances).index_fill_(0, chosen, 0)
        draws = min(size * trials, int((weights > 0).sum()))
        candidates = torch.multinomial(weights, draws, replacement=False, generator=generator)
        # Each of the `size` new centres is the best of its `trials` candidates: the one that lowers the
        # sum of squared distances to the nearest centre most.
        potentials = _potentials(points, points[candidates], distances, block_bytes)
        slots = -(-draws // size) * size
        potentials = torch.nn.functional.pad(potentials, (0, slots - draws), value=float("inf"))
        best = potentials.view(-1, size).argmin(0) * size + torch.arange(size, device=points.device)
        picked = candidates[best.clamp(max=draws - 1)].unique()
        distances = torch.minimum(distances, _nearest(points, points[picked], block_bytes)[1])
        chosen = torch.cat([chosen, picked])
    return points[chosen]


def _potentials(points: Tensor, candidates: Tensor, distances: Tensor, block_bytes: int) -> Tensor:
    """For each candidate centre, the sum of squared distances to the nearest centre once it is added."""
    chunk_size = max(1, block_bytes // (len(candidates) * points.element_size()))
    candidate_sq = candidates.square().sum(1)
    totals = torch.zeros(len(candidates), dtype=torch.float64, device=points.device)
    for chunk, chunk_distances in zip(points.split(chunk_size), distances.split(chunk_size), strict=True):
        squared = torch.addmm(candidate_sq, chunk, candidates.T, alpha=-2)
        squared.add_(chunk.square().sum(1, keepdim=True)).clamp_(min=0)
        totals += torch.minimum(squared, chunk_distances[:, None], out=squared).sum(0)  # in place: one block
    return totals


def _lloyd(points: Tensor, centres: Tensor, max_iter: int, block_bytes: int) -> tuple[Tensor, float]:
    """Lloyd iterations from ``centres`` until assignments stop changing or ``max_iter`` is reached."""
    assignments, distances = _nearest(points, centres, block_bytes)
    for _ in range(max_iter):
        sums = torch.zeros_like(centres).index_add_(0, assignments, points)
        counts = torch.bincount(assignments, minlength=len(centres))
        empty = torch.nonzero(counts == 0).flatten()
        centres = sums / counts.clamp(min=1)[:, None]
        if len(empty):  # move each empty cluster onto one of the worst-served points
            centres[empty] = points[distances.topk(len(empty)).indices]
        new_assignments, distances = _nearest(points, centres, block_bytes)
        converged = torch.equal(new_assignments, assignments)
        assignments = new_assignments
        if converged:
            break
    return assignments, float(distances.sum(dtype=torch.float64))
