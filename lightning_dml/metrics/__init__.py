"""Pure metric core on tensors: chunked exact k-NN, retrieval metrics, clustering metrics."""

from lightning_dml.metrics.clustering import clustering_metrics, pairwise_f1
from lightning_dml.metrics.kmeans import kmeans
from lightning_dml.metrics.knn import Neighbours, count_matches, exact_knn, matching_positions
from lightning_dml.metrics.ranking import RankSummary, rank_summary
from lightning_dml.metrics.retrieval import (
    average_precision_at_r,
    count_relevant,
    metrics_from_neighbours,
    metrics_from_ranks,
    retrieval_metrics,
)

__all__ = [
    "Neighbours",
    "RankSummary",
    "average_precision_at_r",
    "clustering_metrics",
    "count_matches",
    "count_relevant",
    "exact_knn",
    "kmeans",
    "matching_positions",
    "metrics_from_neighbours",
    "metrics_from_ranks",
    "pairwise_f1",
    "rank_summary",
    "retrieval_metrics",
]
