"""Retrieval metrics from one exact k-NN search.

Definitions follow Musgrave et al. 2020, "A Metric Learning Reality Check". For a query with label y:

- R: the number of gallery items labelled y, the query itself excluded (same id).
- ``recall@K``: 1 if at least one of the K nearest gallery items is labelled y, else 0 (the DML field's
  "Recall@K"; it is a hit rate, not the information-retrieval recall).
- ``precision@1``: 1 if the nearest gallery item is labelled y, else 0.
- ``r_precision``: (number of the R nearest items labelled y) / R.
- ``map@r``: (1/R) Σ_{i≤R} P(i)·rel(i), where rel(i) = 1 if the i-th nearest item is labelled y and
  P(i) is the fraction of the i nearest items labelled y.

Each metric is the mean over queries. Lone queries (R = 0: no other gallery item shares the label) are
left out of every mean, as pytorch-metric-learning's ``AccuracyCalculator`` does for ``precision_at_1``,
``r_precision`` and ``mean_average_precision_at_r``; ``recall@K`` follows the same rule, so
``recall@1 == precision@1``. If every query is lone, every metric is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_dml.errors import DataError
from lightning_dml.metrics.knn import Backend, Metric, Neighbours, count_matches, exact_knn, resolve_gallery
from lightning_dml.metrics.ranking import RankSummary, rank_summary

#: Queries per pass when turning ranks into MAP@R and R-Precision.
ROWS_PER_PASS = 2**15


def count_relevant(
    query_labels: Tensor,
    gallery_labels: Tensor,
    query_ids: Tensor | None = None,
    gallery_ids: Tensor | None = None,
) -> Tensor:
    """R per query: gallery items with the query's label, minus those that share the query's id. ``(Nq,)``."""
    relevant = count_matches(query_labels, gallery_labels)
    if query_ids is None:
        return relevant
    # Encode each (label, id) pair as one integer so count_matches can count pairs.
    _, label_codes = torch.unique(torch.cat([gallery_labels, query_labels]), return_inverse=True)
    id_values, id_codes = torch.unique(torch.cat([gallery_ids, query_ids]), return_inverse=True)
    pair_codes = label_codes * len(id_values) + id_codes
    n_gallery = len(gallery_labels)
    return relevant - count_matches(pair_codes[n_gallery:], pair_codes[:n_gallery])


def metrics_from_neighbours(
    neighbours: Neighbours,
    query_labels: Tensor,
    gallery_labels: Tensor,
    relevant: Tensor,
    *,
    recall_at: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, float]:
    """Recall@K, precision@1, R-Precision and MAP@R (module docstring) from one k-NN result.

    ``relevant`` is R per query (``count_relevant``); ``neighbours`` must hold at least
    ``max(max(recall_at), max R)`` columns so that every definition sees all the items it needs.
    """
    needed = max(max(recall_at), int(relevant.max()) if len(relevant) else 0)
    if neighbours.indices.shape[1] < needed:
        raise DataError(
            f"neighbours hold {neighbours.indices.shape[1]} columns but the metrics need {needed} "
            "(max of recall_at and the largest R); search with a larger k"
        )
    indices = neighbours.indices[:, :needed]
    gallery_labels = gallery_labels.to(indices.device)
    query_labels, relevant = query_labels.to(indices.device), relevant.to(indices.device)
    hits = (gallery_labels[indices.clamp(min=0)] == query_labels[:, None]) & (indices >= 0)
    # The first True of a row is its first hit; a row without one gets rank `needed` (no recall@K hit).
    first_hit_rank = torch.where(hits.any(1), hits.byte().argmax(1), needed)
    depth = int(relevant.max()) if len(relevant) else 0
    return metrics_from_ranks(hits[:, :depth], first_hit_rank, relevant, recall_at=recall_at)


def metrics_from_ranks(
    top_hits: Tensor, first_hit_rank: Tensor, relevant: Tensor, *, recall_at: Sequence[int] = (1, 2, 4, 8)
) -> dict[str, float]:
    """Recall@K, precision@1, R-Precision and MAP@R (module docstring) from per-query rank facts.

    ``top_hits`` ``(Nq, m)`` bool: whether the i-th ranked item is relevant, for i ≤ m with m ≥ max R;
    ``first_hit_rank`` ``(Nq,)``: the 0-based rank of the first relevant item; ``relevant``: R per query.
    """
    counted = relevant > 0
    per_query = {f"recall@{k}": first_hit_rank < k for k in recall_at} | {"precision@1": first_hit_rank == 0}
    sums = {name: float(values[counted].sum(dtype=torch.float64)) for name, values in per_query.items()}
    sums["r_precision"] = sums["map@r"] = 0.0
    for rows in torch.nonzero(counted).flatten().split(ROWS_PER_PASS):  # bounds the (rows, m) temporaries
        hits = _hits_within_r(top_hits[rows], relevant[rows])
        sums["r_precision"] += float((hits.sum(1) / relevant[rows].double()).sum())
        sums["map@r"] += float(_average_precision(hits, relevant[rows]).sum())
    n_counted = int(counted.sum())
    return {name: total / n_counted if n_counted else float("nan") for name, total in sums.items()}


def average_precision_at_r(summary: RankSummary) -> Tensor:
    """Per-query AP@R ``(Nq,)`` float64: (1/R) Σ_{i≤R} P(i)·rel(i), NaN for lone queries (R = 0).

    The per-query terms whose mean is MAP@R (``metrics_from_ranks``), which returns only the mean.
    """
    return _average_precision(_hits_within_r(summary.top_hits, summary.relevant), summary.relevant)


def _hits_within_r(top_hits: Tensor, relevant: Tensor) -> Tensor:
    """``top_hits`` with the hits past each query's first R ranks cleared."""
    ranks = torch.arange(1, top_hits.shape[1] + 1, device=top_hits.device)
    return top_hits & (ranks <= relevant[:, None])


def _average_precision(hits: Tensor, relevant: Tensor) -> Tensor:
    """Per-row (1/R) Σ_i P(i)·rel(i) of ``_hits_within_r`` rows, float64 (NaN where R = 0)."""
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    precision_at_rank = hits.cumsum(1).double() / ranks
    return (precision_at_rank * hits).sum(1) / relevant.double()


def retrieval_metrics(
    query_embeddings: Tensor,
    query_labels: Tensor,
    gallery_embeddings: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    *,
    query_ids: Tensor | None = None,
    gallery_ids: Tensor | None = None,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    backend: Backend = "torch",
) -> dict[str, float]:
    """Recall@K for each K in ``recall_at``, precision@1, R-Precision and MAP@R (module docstring).

    Without a gallery this is leave-one-out: the queries are also the gallery and each query is excluded
    by its id (``query_ids``, default ``arange(Nq)``), never by rank, so duplicated embeddings count as
    neighbours. With a gallery, ``query_ids``/``gallery_ids`` (optional) mark items present on both sides.
    ``backend="torch"`` (default) computes everything in one exact pass over ``chunk_size × Ng`` score
    blocks without keeping a top-k list (``ranking.rank_summary``; memory: one label-sorted gallery copy
    plus a 256 MiB block when ``chunk_size`` is None). ``backend="faiss"`` runs one exact faiss k-NN search
    with ``k = max(max(recall_at), max R)``; both give the same numbers.

    >>> emb = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    >>> labels = torch.tensor([0, 1, 0, 1, 1])
    >>> retrieval_metrics(emb, labels, recall_at=(1, 2), metric="euclidean")
    {'recall@1': 0.4, 'recall@2': 0.8, 'precision@1': 0.4, 'r_precision': 0.2, 'map@r': 0.2}
    """
    leave_one_out = gallery_embeddings is None
    if leave_one_out and (gallery_labels is not None or gallery_ids is not None):
        raise DataError("gallery_labels/gallery_ids given without gallery_embeddings; pass all or none")
    if not leave_one_out and gallery_labels is None:
        raise DataError("gallery_embeddings given without gallery_labels; pass both")
    gallery_embeddings, gallery_labels, query_ids, gallery_ids = resolve_gallery(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels, query_ids, gallery_ids
    )
    device = query_embeddings.device
    query_labels, gallery_labels = query_labels.to(device), gallery_labels.to(device)
    if query_ids is not None and gallery_ids is not None:
        query_ids, gallery_ids = query_ids.to(device), gallery_ids.to(device)
    _check_labels(query_embeddings, query_labels, "query")
    _check_labels(gallery_embeddings, gallery_labels, "gallery")
    if not recall_at or min(recall_at) < 1:
        raise DataError(f"recall_at must be a non-empty list of positive ranks, got {list(recall_at)}")
    if backend not in ("torch", "faiss"):
        raise DataError(f'backend must be "torch" or "faiss", got {backend!r}')

    if backend == "torch":
        summary = rank_summary(
            query_embeddings,
            query_labels,
            None if leave_one_out else gallery_embeddings,
            None if leave_one_out else gallery_labels,
            query_ids=query_ids,
            gallery_ids=None if leave_one_out else gallery_ids,
            metric=metric,
            chunk_size=chunk_size,
        )
        return metrics_from_ranks(
            summary.top_hits, summary.first_hit_rank, summary.relevant, recall_at=recall_at
        )
    relevant = count_relevant(query_labels, gallery_labels, query_ids, gallery_ids)
    k = max(max(recall_at), int(relevant.max()) if len(relevant) else 0)
    neighbours = exact_knn(
        query_embeddings,
        gallery_embeddings,
        k,
        metric=metric,
        query_ids=query_ids,
        gallery_ids=gallery_ids,
        backend=backend,
    )
    return metrics_from_neighbours(neighbours, query_labels, gallery_labels, relevant, recall_at=recall_at)


def _check_labels(embeddings: Tensor, labels: Tensor, role: str) -> None:
    """Raise a one-line ``DataError`` unless ``labels`` is 1-D with one entry per embedding row."""
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise DataError(
            f"{role} labels must be 1-D with one entry per embedding, got shape {tuple(labels.shape)} "
            f"for {len(embeddings)} embeddings"
        )
