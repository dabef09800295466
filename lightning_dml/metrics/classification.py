"""1-NN classification scores of embeddings (the G-DML paper's "Recall@1" and "F-score").

Each query is classified with the label of its nearest gallery item (exact search, the query itself
excluded by id in leave-one-out). Then, over the query classes c (``sklearn.metrics``, macro averages):

- ``1nn_macro_recall``: mean over c of (queries of c classified c) / (queries of c); with equally many
  queries per class it equals ``recall@1``.
- ``1nn_macro_f1``: mean over c of F1_c = 2·P_c·R_c / (P_c + R_c), P_c = (queries of c classified c) /
  (queries classified c); 0 for a class never predicted.

When t gallery items tie for nearest, the query casts 1/t of a vote for each one's label (the expected
confusion matrix over a random order of the tied items); macro recall is then the expected macro recall,
and F1 is computed from the expected counts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dml.metrics.knn import Metric
from lightning_dml.metrics.ranking import Ranking, rank


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

    >>> emb, labels = torch.tensor([[0.0], [1.0], [4.0], [9.0]]), torch.tensor([0, 0, 1, 1])
    >>> nearest_neighbour_classification(emb, labels, metric="euclidean")
    {'1nn_macro_recall': 0.75, '1nn_macro_f1': 0.7333333333333334}
    """
    ranking = rank(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        query_ids=query_ids,
        gallery_ids=gallery_ids,
        metric=metric,
        votes=True,
    )
    return classification_from_ranking(ranking, query_labels)


def classification_from_ranking(ranking: Ranking, query_labels: Tensor) -> dict[str, float]:
    """``{"1nn_macro_recall", "1nn_macro_f1"}`` (module docstring) from a ``Ranking`` made with ``votes``."""
    classes, truth = torch.unique(query_labels.to(ranking.votes.device), return_inverse=True)
    confusion = torch.zeros(len(classes), ranking.votes.shape[1], dtype=torch.float64, device=truth.device)
    confusion.index_add_(0, truth, ranking.votes)
    # Each query class's column among the gallery labels (a class no gallery item has is never predicted).
    position = torch.searchsorted(ranking.vote_labels, classes).clamp(
        max=max(len(ranking.vote_labels) - 1, 0)
    )
    known = ranking.vote_labels[position] == classes if len(ranking.vote_labels) else classes < classes
    correct = torch.where(known, confusion.gather(1, position[:, None])[:, 0], 0.0)
    predicted = torch.where(known, confusion.sum(0)[position], 0.0)
    support = confusion.sum(1).new_tensor(torch.bincount(truth, minlength=len(classes)).tolist())
    f1 = torch.where(support + predicted > 0, 2 * correct / (support + predicted), 0.0)
    return {"1nn_macro_recall": float((correct / support).mean()), "1nn_macro_f1": float(f1.mean())}
