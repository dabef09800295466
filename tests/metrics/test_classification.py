"""1-NN macro recall and F1, by hand and against scikit-learn's 1-NN classifier."""

import pytest
import torch
from sklearn.metrics import f1_score, recall_score
from sklearn.neighbors import KNeighborsClassifier

from lightning_dml.metrics.classification import nearest_neighbour_classification


def test_query_vs_gallery_on_a_hand_computed_case():
    gallery = torch.tensor([[0.0], [10.0]])
    gallery_labels = torch.tensor([0, 1])
    queries = torch.tensor([[1.0], [2.0], [9.0], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])  # predicted 0, 0, 1, 0
    scores = nearest_neighbour_classification(queries, labels, gallery, gallery_labels, metric="euclidean")
    # recall: class 0 2/2, class 1 1/2; F1: class 0 2·(2/3)·1/(5/3) = 0.8, class 1 2·1·0.5/1.5 = 2/3
    assert scores["1nn_macro_recall"] == pytest.approx(0.75)
    assert scores["1nn_macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_matches_scikit_learn_one_nearest_neighbour():
    generator = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(200, 3, generator=generator), torch.randn(80, 3, generator=generator)
    gallery_labels = torch.randint(0, 4, (200,), generator=generator)
    labels = torch.randint(0, 4, (80,), generator=generator)
    predicted = KNeighborsClassifier(n_neighbors=1).fit(gallery, gallery_labels).predict(queries)
    scores = nearest_neighbour_classification(queries, labels, gallery, gallery_labels, metric="euclidean")
    assert scores["1nn_macro_recall"] == pytest.approx(recall_score(labels, predicted, average="macro"))
    assert scores["1nn_macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_leave_one_out_excludes_the_query_itself():
    embeddings = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    scores = nearest_neighbour_classification(embeddings, torch.tensor([0, 0, 1, 1]), metric="euclidean")
    assert scores == {"1nn_macro_recall": 1.0, "1nn_macro_f1": 1.0}
