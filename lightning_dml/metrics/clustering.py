"""Clustering quality of embeddings: k-means, then NMI and the pairwise F1.

k-means (``kmeans.kmeans``: greedy k-means++ seeding in batches, chunked Lloyd iterations, seeded) runs
with as many clusters as there are distinct labels. Then:

- ``nmi``: normalised mutual information between labels and clusters
  (``sklearn.metrics.normalized_mutual_info_score``, arithmetic normalisation).
- ``f1``: the DML clustering F-measure over pairs of items. Precision = same-class pairs among
  same-cluster pairs; recall = same-cluster pairs among same-class pairs; F1 = 2PR / (P + R)
  = 2TP / (2TP + FP + FN).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_dml.errors import DataError
from lightning_dml.metrics.kmeans import kmeans
from lightning_dml.metrics.knn import prepare_embeddings


def pairwise_f1(labels: np.ndarray | Tensor, clusters: np.ndarray | Tensor) -> float:
    """Pairwise F1 of a clustering against class labels (module docstring).

    Pair counts come from ``pair_confusion_matrix`` (a contingency table, no N² memory). When there is
    no same-class and no same-cluster pair (all singletons on both sides) the partitions agree: 1.0.
    """
    labels, clusters = np.asarray(labels).ravel(), np.asarray(clusters).ravel()
    if len(labels) != len(clusters):
        raise DataError(
            f"got {len(labels)} labels but {len(clusters)} cluster ids; pass one of each per item"
        )
    from sklearn.metrics.cluster import pair_confusion_matrix  # deferred for start-up time

    pairs = pair_confusion_matrix(labels, clusters)
    true_pos, false_pos, false_neg = pairs[1, 1], pairs[0, 1], pairs[1, 0]
    if true_pos + false_pos + false_neg == 0:
        return 1.0
    return float(2 * true_pos / (2 * true_pos + false_pos + false_neg))


def clustering_metrics(
    embeddings: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 20,
    normalize: bool = True,
) -> dict[str, float]:
    """``{"nmi", "f1"}`` of a k-means clustering of ``embeddings`` with one cluster per distinct label.

    ``normalize`` L2-normalises the embeddings first, so k-means works in the geometry of the cosine
    retrieval metric. ``seed``, ``n_init`` (runs, the lowest inertia kept) and ``max_iter`` (Lloyd
    iterations per run) make the result reproducible and bound its cost.
    """
    from sklearn.metrics import normalized_mutual_info_score  # deferred for start-up time

    if embeddings.ndim != 2 or labels.shape != (len(embeddings),):
        raise DataError(
            f"embeddings must be (N, D) with 1-D labels of length N, got {tuple(embeddings.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if len(embeddings) == 0:
        raise DataError("no embeddings to cluster; the evaluation set is empty")
    if not torch.isfinite(embeddings).all():
        raise DataError("embeddings contain NaN or inf; check the model output (did the loss diverge?)")
    points = prepare_embeddings(embeddings, "cosine" if normalize else "euclidean")
    label_values = labels.detach().cpu().numpy()
    n_clusters = len(np.unique(label_values))
    clusters, _ = kmeans(points, n_clusters, seed=seed, n_init=n_init, max_iter=max_iter)
    clusters = clusters.cpu().numpy()
    return {
        "nmi": float(normalized_mutual_info_score(label_values, clusters)),
        "f1": pairwise_f1(label_values, clusters),
    }
