"""1-NN classification scores of embeddings (the G-DML paper's "Recall@1" and "F-score").

Each query is classified with the label of its nearest gallery item (exact search, the query itself
excluded by id in leave-one-out). Then, over the query classes c (``sklearn.metrics``, macro averages):

- ``1nn_macro_recall``: mean over c of (queries of c classified c) / (queries of c); with equally many
  queries per class it equals ``recall@1``.
- ``1nn_macro_f1``: mean over c of F1_c = 2·P_c·R_c / (P_c + R_c), P_c = (queries of c classified c) /
  (queries classified c); 0 for a class never predicted.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, recall_score
from torch import Tensor

from lightning_dml.metrics.knn import Metric, exact_knn, resolve_gallery


def nearest_neighbour_classification(
    query_embeddings: Tensor,
    query_labels: Tensor,
    gallery_embeddings: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    *,
    query_ids: Tensor | None = None,
    gallery_ids: Tensor | None = None,
    metric: Metric = "cosine",
) -> dict[str, float]:
    """``{"1nn_macro_recall", "1nn_macro_f1"}`` of the 1-NN classifier (module docstring).

    Without a gallery the queries are their own gallery (leave-one-out, ids default to positions).

    >>> import torch
    >>> emb, labels = torch.tensor([[0.0], [1.0], [4.0], [9.0]]), torch.tensor([0, 0, 1, 1])
    >>> nearest_neighbour_classification(emb, labels, metric="euclidean")
    {'1nn_macro_recall': 0.75, '1nn_macro_f1': 0.7333333333333334}
    """
    gallery_embeddings, gallery_labels, query_ids, gallery_ids = resolve_gallery(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels, query_ids, gallery_ids
    )
    neighbours = exact_knn(
        query_embeddings, gallery_embeddings, 1, metric=metric, query_ids=query_ids, gallery_ids=gallery_ids
    )
    truth = query_labels.cpu().numpy()
    predicted = gallery_labels.cpu()[neighbours.indices[:, 0].cpu()].numpy()
    classes = np.unique(truth)
    options = {"labels": classes, "average": "macro", "zero_division": 0}
    return {
        "1nn_macro_recall": float(recall_score(truth, predicted, **options)),
        "1nn_macro_f1": float(f1_score(truth, predicted, **options)),
    }
