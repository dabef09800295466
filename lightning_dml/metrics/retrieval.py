"""Retrieval metrics from the one exact ranking (``ranking.rank``).

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

Tied scores: each per-query value is its expected value over a uniformly random order of the tied items
(``ties``), so a collapsed embedding scores what a random ranking scores on average, never a perfect 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_dml.errors import DataError
from lightning_dml.metrics.knn import Backend, Metric, count_matches
from lightning_dml.metrics.ranking import Ranking, rank


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


def metrics_from_ranking(ranking: Ranking, recall_at: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """Recall@K for each K in ``recall_at``, precision@1, R-Precision and MAP@R (module docstring): the
    means over non-lone queries of ``ranking``'s per-query expected values."""
    counted = ranking.relevant > 0
    per_query = {f"recall@{k}": ranking.recall_at(k) for k in recall_at}
    per_query |= {
        "precision@1": ranking.recall_at(1),
        "r_precision": ranking.r_precision,
        "map@r": ranking.average_precision,
    }
    n_counted = int(counted.sum())
    return {
        # math.fsum: exactly rounded, so a mean does not depend on the summation order (threads, ranks)
        name: math.fsum(values[counted].double().tolist()) / n_counted if n_counted else float("nan")
        for name, values in per_query.items()
    }


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
    ``backend="torch"`` (default) scores ``chunk_size × Ng`` blocks without keeping a top-k list for
    Recall@K (memory: one label-sorted gallery copy plus a 256 MiB block when ``chunk_size`` is None);
    ``backend="faiss"`` searches ``max(recall_at)`` neighbours with a faiss flat index. Both resolve close
    calls in float64 (``ranking``) and give the same numbers, ties included.

    >>> emb = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    >>> labels = torch.tensor([0, 1, 0, 1, 1])
    >>> retrieval_metrics(emb, labels, recall_at=(1, 2), metric="euclidean")
    {'recall@1': 0.4, 'recall@2': 0.8, 'precision@1': 0.4, 'r_precision': 0.2, 'map@r': 0.2}
    """
    if gallery_embeddings is None and (gallery_labels is not None or gallery_ids is not None):
        raise DataError("gallery_labels/gallery_ids given without gallery_embeddings; pass all or none")
    if gallery_embeddings is not None and gallery_labels is None:
        raise DataError("gallery_embeddings given without gallery_labels; pass both")
    _check_labels(query_embeddings, query_labels, "query")
    if gallery_embeddings is not None:
        _check_labels(gallery_embeddings, gallery_labels, "gallery")
    if not recall_at or min(recall_at) < 1:
        raise DataError(f"recall_at must be a non-empty list of positive ranks, got {list(recall_at)}")
    ranking = rank(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        query_ids=query_ids,
        gallery_ids=gallery_ids,
        metric=metric,
        backend=backend,
        depth=max(recall_at),
        chunk_size=chunk_size,
    )
    return metrics_from_ranking(ranking, recall_at)


def _check_labels(embeddings: Tensor, labels: Tensor, role: str) -> None:
    """Raise a one-line ``DataError`` unless ``labels`` is 1-D with one entry per embedding row."""
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise DataError(
            f"{role} labels must be 1-D with one entry per embedding, got shape {tuple(labels.shape)} "
            f"for {len(embeddings)} embeddings"
        )
