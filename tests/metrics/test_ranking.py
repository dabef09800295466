import itertools
import math

import pytest
import torch

from lightning_dml.errors import DataError
from lightning_dml.metrics import nearest_neighbour_classification, rank, retrieval_metrics
from lightning_dml.metrics.ranking import _halving_pays, screen_tolerance
from tests.reference import float64_scores, tie_averaged_metrics

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision", "map@r")


def circle(n=6000, n_classes=10, seed=0, offset=(0.0, 0.0)):
    """L2-normalised 2-D points (moved by ``offset``): float32 rounds near neighbours onto equal scores."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    angle = labels * (2 * math.pi / n_classes) + 0.6 * torch.randn(n, generator=generator)
    points = torch.stack([angle.cos(), angle.sin()], 1).float() + torch.tensor(offset)
    _, inverse = torch.unique(points, dim=0, return_inverse=True)  # drop exact duplicates: no true ties
    first = torch.full((int(inverse.max()) + 1,), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
    return points[first], labels[first]


def assert_no_ties(embeddings, metric):
    """The reference with one trial is exact only without equal float64 scores in a row."""
    ranked = float64_scores(embeddings, embeddings, metric).fill_diagonal_(-float("inf")).sort(1).values
    assert not (ranked[:, 1:] == ranked[:, :-1])[:, 1:].any()


def test_hand_case_leave_one_out_euclidean():
    # Points 0, 1, 3, 7, 8 with labels a b a b b. Ranked labels (self excluded), R, first hit:
    # 0: b a b b, R=1, rank 1   1: a a b b, R=2, rank 2   3: b a b b, R=1, rank 1
    # 7: b a b a, R=2, rank 0   8: b a b a, R=2, rank 0
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    result = rank(embeddings, torch.tensor([0, 1, 0, 1, 1]), metric="euclidean")
    assert result.relevant.tolist() == [1, 2, 1, 2, 2]
    assert result.above.tolist() == [1, 2, 1, 0, 0]
    assert result.tied.tolist() == [1] * 5
    # AP@R: 7 and 8 rank their twin first (1/1), then a miss: (1 + 0)/2.
    assert result.average_precision.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5]
    assert result.top_indices[3].tolist()[:3] == [4, 2, 1]
    assert result.top_scores[3].tolist()[:3] == [-1.0, -16.0, -36.0]


def test_a_tie_counts_half_when_one_of_two_is_relevant():
    # From the query at the origin, items at +1 (relevant) and -1 (not) are equally near.
    embeddings = torch.tensor([[0.0], [1.0], [-1.0], [5.0]])
    result = retrieval_metrics(embeddings[:1], torch.tensor([0]), embeddings[1:], torch.tensor([0, 1, 0]),
                               recall_at=(1, 2, 3), metric="euclidean")  # fmt: skip
    # Orders: (+1, -1, 5) or (-1, +1, 5), each with probability 1/2. R = 2 (+1 and 5).
    # recall@1 = 1/2; recall@2 = 1; R-Precision: 1/2; AP@R = ((1/1)·½ + (1/2)·½) / 2 = 3/8.
    assert result == pytest.approx(
        {"recall@1": 0.5, "recall@2": 1.0, "recall@3": 1.0, "precision@1": 0.5, "r_precision": 0.5,
         "map@r": 0.375}, abs=1e-15)  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_two_d_normalised_points_match_float64_reference(backend):
    embeddings, labels = circle()
    assert_no_ties(embeddings, "cosine")
    expected, _ = tie_averaged_metrics(embeddings, labels)
    result = retrieval_metrics(embeddings, labels, backend=backend)
    assert {name: result[name] for name in METRICS} == pytest.approx(
        {name: expected[name] for name in METRICS}, abs=1e-12
    )
    assert nearest_neighbour_classification(embeddings, labels)["1nn_macro_recall"] == pytest.approx(
        expected["1nn_macro_recall"], abs=1e-12
    )


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_euclidean_far_from_the_origin_matches_float64_reference(backend):
    # |g|² ≈ 1.5e4 makes float32's 2<q, g> - |g|² useless to tell near neighbours apart.
    embeddings, labels = circle(n=1500, offset=(100.0, -70.0))
    assert_no_ties(embeddings, "euclidean")
    expected, _ = tie_averaged_metrics(embeddings, labels, metric="euclidean")
    result = retrieval_metrics(embeddings, labels, metric="euclidean", backend=backend)
    assert {name: result[name] for name in METRICS} == pytest.approx(
        {name: expected[name] for name in METRICS}, abs=1e-12
    )


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_duplicates_match_the_expected_value_over_tie_orders(backend):
    # Points on a coarse grid: many exact duplicates and equal distances, so ties everywhere.
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randint(-2, 3, (300, 2), generator=generator).float()
    labels = torch.randint(0, 4, (300,), generator=generator)
    expected, error = tie_averaged_metrics(embeddings, labels, metric="euclidean", trials=400)
    result = retrieval_metrics(embeddings, labels, metric="euclidean", backend=backend)
    for name in METRICS:
        assert abs(result[name] - expected[name]) < 5 * error[name] + 1e-12, name


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_backends_agree_on_tied_data(metric):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randint(-3, 4, (800, 3), generator=generator).float()
    labels = torch.randint(0, 6, (800,), generator=generator)
    ks = (1, 5, 50, 500)
    by_torch = retrieval_metrics(embeddings, labels, recall_at=ks, metric=metric, chunk_size=61)
    by_faiss = retrieval_metrics(embeddings, labels, recall_at=ks, metric=metric, backend="faiss")
    assert by_torch == pytest.approx(by_faiss, abs=1e-12)


def test_collapsed_embedding_scores_chance_not_one():
    # 40 identical points, 4 classes of 10: any order is equally likely, so recall@1 = 9/39.
    labels = torch.arange(40) % 4
    result = retrieval_metrics(torch.ones(40, 8), labels, recall_at=(1, 2))
    assert result["recall@1"] == pytest.approx(9 / 39, abs=1e-15)
    assert result["recall@2"] == pytest.approx(1 - (30 / 39) * (29 / 38), abs=1e-15)
    assert result["r_precision"] == pytest.approx(9 / 39, abs=1e-15)
    expected, error = tie_averaged_metrics(torch.ones(40, 8), labels, recall_at=(1, 2), trials=2000)
    assert abs(result["map@r"] - expected["map@r"]) < 5 * error["map@r"]
    assert retrieval_metrics(torch.ones(40, 8), labels, recall_at=(1, 2), backend="faiss") == pytest.approx(
        result, abs=1e-15
    )
    votes = nearest_neighbour_classification(torch.ones(40, 8), labels)
    assert votes["1nn_macro_recall"] == pytest.approx(9 / 39, abs=1e-15)


def test_ties_in_expected_value_agree_with_every_order_enumerated():
    # Three items tie for the query: two relevant, one not; one more relevant item comes after.
    embeddings = torch.tensor([[0.0], [2.0], [-2.0], [2.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 0, 0])
    query, gallery = embeddings[:1], embeddings[1:]
    result = rank(query, labels[:1], gallery, labels[1:], metric="euclidean")
    # Enumerate the 3! orders of the tied items (positions 1–3), the relevant one at 4 stays last.
    aps, rps, first = [], [], []
    for order in itertools.permutations([True, False, True]):
        hits = [*order, True]
        precision = [sum(hits[: i + 1]) / (i + 1) for i in range(3)]
        aps.append(sum(p for p, hit in zip(precision, hits[:3], strict=True) if hit) / 3)
        rps.append(sum(hits[:3]) / 3)
        first.append(hits.index(True))
    assert result.average_precision.item() == pytest.approx(sum(aps) / 6, abs=1e-15)
    assert result.r_precision.item() == pytest.approx(sum(rps) / 6, abs=1e-15)
    assert result.recall_at(1).item() == pytest.approx(sum(f < 1 for f in first) / 6, abs=1e-15)
    assert (result.above.item(), result.tied.item(), result.tied_relevant.item()) == (0, 3, 2)


@pytest.mark.parametrize("chunk_size", [1, 97, None])
def test_query_vs_gallery_with_shared_ids_matches_reference(make_clustered, chunk_size):
    embeddings, labels = make_clustered(seed=6, n_classes=60)
    n = len(labels)
    # Queries: the first 60 %; gallery: the last 70 % (10 % of the items are on both sides, same id).
    queries, gallery = slice(0, 6 * n // 10), slice(3 * n // 10, n)
    ids = torch.arange(n)
    result = rank(embeddings[queries], labels[queries], embeddings[gallery], labels[gallery],
                  query_ids=ids[queries], gallery_ids=ids[gallery], chunk_size=chunk_size)  # fmt: skip
    scores = float64_scores(embeddings[queries], embeddings[gallery], "cosine")
    same_id = ids[queries, None] == ids[None, gallery]
    scores[same_id] = -float("inf")
    relevant = (labels[queries, None] == labels[None, gallery]) & ~same_id
    assert torch.equal(result.relevant, relevant.sum(1))
    best = scores.masked_fill(~relevant, -float("inf")).amax(1, keepdim=True)
    counted = result.relevant > 0
    assert torch.equal(result.above[counted], (scores > best).sum(1)[counted])
    assert result.relevant.min() == 0  # some queries are lone, and are reported as such
    top = scores.topk(3, dim=1).indices
    assert torch.equal(result.top_indices[:, :3], top)


def test_screen_tolerance_bounds_the_float32_error():
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(500, 64, generator=generator) * 40
    for metric in ("cosine", "euclidean"):
        prepared = torch.nn.functional.normalize(points, dim=1) if metric == "cosine" else points
        float32 = prepared @ prepared.T
        exact = (
            float64_scores(points, points, "cosine")
            if metric == "cosine"
            else points.double() @ points.double().T
        )
        if metric == "euclidean":  # the screen's value 2<q, g> - |g|²
            float32 = 2 * float32 - prepared.square().sum(1)
            exact = 2 * exact - points.double().square().sum(1)
        error = (float32.double() - exact).abs().amax(1)
        assert (error <= screen_tolerance(prepared, prepared, metric)).all()


def test_empty_and_lone_cases():
    result = rank(torch.ones(2, 3), torch.tensor([0, 1]), torch.ones(0, 3), torch.zeros(0, dtype=torch.long))
    assert result.relevant.tolist() == [0, 0]
    alone = rank(torch.eye(3), torch.tensor([0, 1, 2]))
    assert alone.relevant.tolist() == [0, 0, 0] and alone.average_precision.isnan().all()


def test_bad_input_raises_data_error():
    queries, labels = torch.ones(3, 2), torch.zeros(3)
    with pytest.raises(DataError, match="same D"):
        rank(queries, labels, torch.ones(3, 4), labels)
    with pytest.raises(DataError, match="both query_ids and gallery_ids"):
        rank(queries, labels, queries, labels, query_ids=torch.arange(3))


def rotated_circle(n=3000, n_classes=300, dim=256, seed=1):
    """Near-tied 2-D circle points turned into ``dim`` dimensions (small classes: the half-matrix path)."""
    points, labels = circle(n=n, n_classes=n_classes, seed=seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))[0]
    return (points @ basis[:2]).float(), labels


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_half_matrix_path_resolves_near_ties(backend):
    embeddings, labels = rotated_circle()
    assert _halving_pays(embeddings.shape[1], int(torch.bincount(labels).max()) - 1)
    assert_no_ties(embeddings, "cosine")
    expected, _ = tie_averaged_metrics(embeddings, labels)
    result = retrieval_metrics(embeddings, labels, backend=backend)
    assert {name: result[name] for name in METRICS} == pytest.approx(
        {name: expected[name] for name in METRICS}, abs=1e-12
    )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_half_matrix_path_with_exact_duplicates(metric):
    # Exact duplicates of continuous vectors: the only ties (no distinct vectors tie in exact arithmetic).
    generator = torch.Generator().manual_seed(8)
    distinct = torch.randn(200, 128, generator=generator)
    copies = torch.randint(0, 3, (200,), generator=generator)
    embeddings = distinct.repeat_interleave(copies + 1, 0)
    labels = torch.randint(0, 120, (len(embeddings),), generator=generator)
    assert _halving_pays(128, int(torch.bincount(labels).max()) - 1)
    expected, error = tie_averaged_metrics(embeddings, labels, metric=metric, trials=300)
    result = retrieval_metrics(embeddings, labels, metric=metric)
    for name in METRICS:
        assert abs(result[name] - expected[name]) < 5 * error[name] + 1e-12, name
    assert retrieval_metrics(embeddings, labels, metric=metric, backend="faiss") == pytest.approx(
        result, abs=1e-12
    )
