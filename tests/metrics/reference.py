"""An independent float64 reference for the retrieval metrics: full score matrices, fully sorted rows.

Written apart from the code under test: every row of the float64 score matrix is sorted, ties broken
by a fresh random key in each of ``trials`` trials, and the textbook definitions are averaged over the
trials. Without exact ties every trial gives the same order, so the reference is exact; with ties it
estimates the expected value over random tie orders (Monte Carlo, standard error returned).
"""

from __future__ import annotations

import torch

INF = float("inf")


def float64_scores(query, gallery, metric):
    """Cosine of float64-normalised rows, or -|q - g|² computed as a difference (no cancellation)."""
    query, gallery = query.double(), gallery.double()
    if metric == "cosine":
        return (query / query.norm(dim=1, keepdim=True)) @ (gallery / gallery.norm(dim=1, keepdim=True)).T
    return -(query[:, None, :] - gallery[None, :, :]).square().sum(-1)


def reference_metrics(
    query,
    query_labels,
    gallery=None,
    gallery_labels=None,
    *,
    metric="cosine",
    ks=(1, 2, 4, 8),
    trials=1,
    seed=0,
):
    """``(means, standard errors)`` of recall@K, precision@1, R-Precision, MAP@R and the 1-NN macro recall."""
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = query, query_labels
    scores = float64_scores(query, gallery, metric)
    relevant = query_labels[:, None] == gallery_labels[None, :]
    if leave_one_out:
        scores.fill_diagonal_(-INF)
        relevant.fill_diagonal_(False)
    counted = relevant.any(1)
    r = relevant.sum(1)
    generator = torch.Generator().manual_seed(seed)
    per_trial = []
    for _ in range(trials):
        key = torch.rand(scores.shape, generator=generator, dtype=torch.float64)
        by_key = key.argsort(1)
        order = by_key.gather(1, scores.gather(1, by_key).argsort(dim=1, descending=True, stable=True))
        hits = relevant.gather(1, order)
        first = torch.where(hits.any(1), hits.byte().argmax(1), hits.shape[1])
        values = {f"recall@{k}": (first < k).double() for k in ks}
        values["precision@1"] = (first < 1).double()
        position = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
        within = hits & (position <= r[:, None])
        values["r_precision"] = within.sum(1).double() / r.clamp(min=1)
        values["map@r"] = ((within.cumsum(1) / position) * within).sum(1) / r.clamp(min=1)
        summary = {name: float(v[counted].mean()) for name, v in values.items()}
        nearest = gallery_labels[order[:, 0]]
        classes = torch.unique(query_labels)
        summary["1nn_macro_recall"] = float(
            torch.stack([(nearest[query_labels == c] == c).double().mean() for c in classes]).mean()
        )
        per_trial.append(summary)
    means = {name: sum(t[name] for t in per_trial) / trials for name in per_trial[0]}
    spread = {
        name: (sum((t[name] - means[name]) ** 2 for t in per_trial) / max(trials - 1, 1) / trials) ** 0.5
        for name in means
    }
    return means, spread
