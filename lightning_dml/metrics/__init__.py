"""Pure metric core on tensors: chunked exact k-NN, retrieval metrics, clustering metrics."""

from lightning_dml.metrics.clustering import clustering_metrics, pairwise_f1
from lightning_dml.metrics.knn import Neighbours, count_matches, exact_knn
from lightning_dml.metrics.retrieval import count_relevant, metrics_from_neighbours, retrieval_metrics

__all__ = [
    "Neighbours",
    "clustering_metrics",
    "count_matches",
    "count_relevant",
    "exact_knn",
    "metrics_from_neighbours",
    "pairwise_f1",
    "retrieval_metrics",
]
