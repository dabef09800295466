"""Pure metric core on tensors: the one exact ranking, retrieval, classification and clustering metrics."""

from lightning_dml.metrics.classification import classification_from_ranking, nearest_neighbour_classification
from lightning_dml.metrics.clustering import clustering_metrics, pairwise_f1
from lightning_dml.metrics.kmeans import kmeans
from lightning_dml.metrics.knn import Neighbours, count_matches, exact_knn, matching_positions
from lightning_dml.metrics.ranking import Ranking, rank
from lightning_dml.metrics.retrieval import count_relevant, metrics_from_ranking, retrieval_metrics
from lightning_dml.metrics.ties import expected_precisions, expected_recall_at

__all__ = [
    "Neighbours",
    "Ranking",
    "classification_from_ranking",
    "clustering_metrics",
    "count_matches",
    "count_relevant",
    "exact_knn",
    "expected_precisions",
    "expected_recall_at",
    "kmeans",
    "matching_positions",
    "metrics_from_ranking",
    "nearest_neighbour_classification",
    "pairwise_f1",
    "rank",
    "retrieval_metrics",
]
