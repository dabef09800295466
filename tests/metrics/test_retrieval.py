import doctest
import math

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

import lightning_dml.metrics.retrieval as retrieval_module
from lightning_dml.errors import DataError
from lightning_dml.metrics import count_relevant, retrieval_metrics

PML_NAMES = {
    "precision@1": "precision_at_1",
    "r_precision": "r_precision",
    "map@r": "mean_average_precision_at_r",
}


def pml_metrics(query, query_labels, gallery=None, gallery_labels=None, metric="cosine"):
    """pytorch-metric-learning's AccuracyCalculator, the independent reference."""
    knn = CustomKNN(CosineSimilarity()) if metric == "cosine" else FaissKNN()  # FaissKNN: squared L2
    calculator = AccuracyCalculator(
        include=tuple(PML_NAMES.values()), k="max_bin_count", knn_func=knn, device=torch.device("cpu")
    )
    if gallery is None:
        result = calculator.get_accuracy(query, query_labels, ref_includes_query=True)
    else:
        result = calculator.get_accuracy(
            query, query_labels, gallery, gallery_labels, ref_includes_query=False
        )
    return {ours: result[theirs] for ours, theirs in PML_NAMES.items()}


def brute_force_recall(query, query_labels, gallery, gallery_labels, ks, leave_one_out):
    """Recall@K from the full similarity matrix, lone queries left out."""
    scores = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    same_label = query_labels[:, None] == gallery_labels[None, :]
    if leave_one_out:
        scores.fill_diagonal_(-float("inf"))
        same_label.fill_diagonal_(False)
    ranked_hits = same_label.gather(1, scores.argsort(dim=1, descending=True))
    counted = same_label.any(dim=1)
    return {f"recall@{k}": ranked_hits[counted, :k].any(dim=1).double().mean().item() for k in ks}


def test_hand_case_end_to_end_leave_one_out():
    # Points 0, 1, 3, 7, 8 on a line; labels a, b, a, b, b. Nearest-first label lists (self excluded):
    # 0: b a b b (R=1)  1: a a b b (R=2)  3: b a b b (R=1)  7: b a b a (R=2)  8: b a b a (R=2)
    # P@1 = 2/5; R-Precision = (0 + 0 + 0 + 1/2 + 1/2)/5; MAP@R = (0 + 0 + 0 + 1/2 + 1/2)/5;
    # recall@1 = 2/5; recall@2 = 4/5 (only point 1 misses its label in the top 2).
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    labels = torch.tensor([0, 1, 0, 1, 1])
    result = retrieval_metrics(embeddings, labels, recall_at=(1, 2), metric="euclidean")
    expected = {"recall@1": 0.4, "recall@2": 0.8, "precision@1": 0.4, "r_precision": 0.2, "map@r": 0.2}
    assert result == pytest.approx(expected, abs=1e-12)


def test_docstring_example_runs():
    failures, tried = doctest.testmod(retrieval_module)
    assert tried > 0 and failures == 0


def test_count_relevant_excludes_same_id_only():
    labels = torch.tensor([4, 4, 4, 9])
    assert count_relevant(labels, labels, torch.arange(4), torch.arange(4)).tolist() == [2, 2, 2, 0]
    assert count_relevant(torch.tensor([4, 9, 5]), labels).tolist() == [3, 1, 0]
    # Query id 1 occurs twice in the gallery with label 4: both copies are excluded.
    gallery_ids = torch.tensor([1, 1, 2, 3])
    assert count_relevant(torch.tensor([4]), labels, torch.tensor([1]), gallery_ids).tolist() == [1]


@pytest.mark.parametrize(
    ("seed", "n_classes", "dim", "spread"), [(0, 30, 16, 0.8), (1, 30, 16, 0.8), (2, 300, 256, 2.0)]
)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_leave_one_out_matches_pytorch_metric_learning(make_clustered, seed, n_classes, dim, spread, metric):
    embeddings, labels = make_clustered(seed, n_classes=n_classes, dim=dim, spread=spread)
    result = retrieval_metrics(embeddings, labels, metric=metric)
    reference = pml_metrics(embeddings, labels, metric=metric)
    assert {name: result[name] for name in PML_NAMES} == pytest.approx(reference, abs=1e-6)
    assert 0.2 < result["map@r"] < 0.95  # neither trivial nor hopeless, so the comparison means something


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_query_vs_gallery_matches_pytorch_metric_learning(make_clustered, metric):
    embeddings, labels = make_clustered(seed=2, n_classes=40)
    # Queries from classes 0..34, gallery from classes 5..39: queries of classes 0..4 are lone.
    is_query = (torch.arange(len(labels)) % 3 == 0) & (labels < 35)
    in_gallery = ~is_query & (labels >= 5)
    query, query_labels = embeddings[is_query], labels[is_query]
    gallery, gallery_labels = embeddings[in_gallery], labels[in_gallery]
    result = retrieval_metrics(query, query_labels, gallery, gallery_labels, metric=metric)
    reference = pml_metrics(query, query_labels, gallery, gallery_labels, metric=metric)
    assert {name: result[name] for name in PML_NAMES} == pytest.approx(reference, abs=1e-6)


def test_recall_matches_brute_force_leave_one_out(clustered):
    embeddings, labels = clustered
    ks = (1, 2, 4, 8, 16)
    result = retrieval_metrics(embeddings, labels, recall_at=ks)
    expected = brute_force_recall(embeddings, labels, embeddings, labels, ks, leave_one_out=True)
    assert {name: result[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    assert result["recall@1"] == result["precision@1"]


def test_recall_matches_brute_force_query_vs_gallery(make_clustered):
    embeddings, labels = make_clustered(seed=3)
    query, query_labels, gallery, gallery_labels = (
        embeddings[::2],
        labels[::2],
        embeddings[1::2],
        labels[1::2],
    )
    ks = (1, 3, 10)
    result = retrieval_metrics(query, query_labels, gallery, gallery_labels, recall_at=ks)
    expected = brute_force_recall(query, query_labels, gallery, gallery_labels, ks, leave_one_out=False)
    assert {name: result[name] for name in expected} == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_torch_and_faiss_backends_agree_up_to_deep_recall(make_clustered, metric):
    embeddings, labels = make_clustered(seed=7, n_classes=300)
    ks = (1, 10, 100, 1000)
    by_torch = retrieval_metrics(embeddings, labels, recall_at=ks, metric=metric)
    by_faiss = retrieval_metrics(embeddings, labels, recall_at=ks, metric=metric, backend="faiss")
    assert by_torch == pytest.approx(by_faiss, abs=1e-12)
    assert by_torch["recall@1"] < by_torch["recall@10"] < by_torch["recall@100"] < 1.0


def test_chunk_size_and_backend_do_not_change_metrics(clustered):
    embeddings, labels = clustered
    reference = retrieval_metrics(embeddings, labels)
    for options in ({"chunk_size": 1}, {"chunk_size": 7}, {"backend": "faiss"}):
        assert retrieval_metrics(embeddings, labels, **options) == pytest.approx(reference, abs=1e-12)


def test_duplicate_embeddings_count_as_correct_neighbours():
    # Two identical images of class 0 and one of class 1: each class-0 copy finds its twin first.
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    result = retrieval_metrics(embeddings, labels, recall_at=(1,))
    assert result == {"recall@1": 1.0, "precision@1": 1.0, "r_precision": 1.0, "map@r": 1.0}


def test_all_lone_queries_give_nan():
    result = retrieval_metrics(torch.eye(3), torch.tensor([0, 1, 2]), recall_at=(1,))
    assert all(math.isnan(value) for value in result.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_labels": torch.zeros(3, dtype=torch.long)}, "query labels"),
        ({"gallery_embeddings": torch.ones(4, 2)}, "without gallery_labels"),
        ({"gallery_labels": torch.zeros(4, dtype=torch.long)}, "without gallery_embeddings"),
        ({"recall_at": (0, 1)}, "recall_at"),
    ],
)
def test_bad_input_raises_data_error(kwargs, message):
    arguments = {"query_embeddings": torch.ones(4, 2), "query_labels": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(DataError, match=message):
        retrieval_metrics(**{**arguments, **kwargs})
