import pytest
import torch

from lightning_dml.errors import DataError
from lightning_dml.metrics import RankSummary, rank_summary
from lightning_dml.metrics.symmetric import _count_later_above

INF = float("inf")


def brute_force_summary(query, query_labels, gallery, gallery_labels, query_ids, gallery_ids, metric):
    """The whole score matrix, same-id items removed, every row fully sorted: the independent reference."""
    if metric == "cosine":
        scores = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    else:
        scores = -torch.cdist(query.double(), gallery.double()).square()
    relevant_mask = query_labels[:, None] == gallery_labels[None, :]
    if query_ids is not None:
        same_id = query_ids[:, None] == gallery_ids[None, :]
        scores[same_id] = -INF
        relevant_mask &= ~same_id
    relevant = relevant_mask.sum(1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    valid = scores.gather(1, order) > -INF
    ranked_hits = relevant_mask.gather(1, order) & valid
    best_relevant = scores.masked_fill(~relevant_mask, -INF).amax(1, keepdim=True)
    first_hit_rank = (scores > best_relevant).sum(1)
    depth = int(relevant.max())
    within_r = torch.arange(depth) < relevant[:, None]
    return RankSummary(relevant, ranked_hits[:, :depth] & within_r, first_hit_rank)


def assert_same_summary(result, expected):
    assert torch.equal(result.relevant, expected.relevant)
    assert torch.equal(result.top_hits, expected.top_hits)
    counted = expected.relevant > 0  # first_hit_rank is only defined where R > 0
    assert torch.equal(result.first_hit_rank[counted], expected.first_hit_rank[counted])


def test_hand_case_leave_one_out_euclidean():
    # Points 0, 1, 3, 7, 8 with labels a b a b b. Ranked labels (self excluded), R, first hit:
    # 0: b a b b, R=1, rank 1   1: a a b b, R=2, rank 2   3: b a b b, R=1, rank 1
    # 7: b a b a, R=2, rank 0   8: b a b a, R=2, rank 0
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    result = rank_summary(embeddings, torch.tensor([0, 1, 0, 1, 1]), metric="euclidean")
    assert result.relevant.tolist() == [1, 2, 1, 2, 2]
    assert result.first_hit_rank.tolist() == [1, 2, 1, 0, 0]
    hit, miss = True, False
    assert result.top_hits.tolist() == [[miss, miss], [miss, miss], [miss, miss], [hit, miss], [hit, miss]]


# 256 dimensions take the half-matrix path (symmetric.py), 16 the whole-row path.
@pytest.mark.parametrize(("n_classes", "dim", "spread"), [(30, 16, 0.8), (300, 16, 0.8), (300, 256, 2.5)])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk_size", [97, None])
def test_leave_one_out_matches_brute_force(make_clustered, n_classes, dim, spread, metric, chunk_size):
    embeddings, labels = make_clustered(seed=5, n_classes=n_classes, dim=dim, spread=spread)
    ids = torch.arange(len(labels))
    expected = brute_force_summary(embeddings, labels, embeddings, labels, ids, ids, metric)
    result = rank_summary(embeddings, labels, metric=metric, chunk_size=chunk_size)
    assert_same_summary(result, expected)
    missed_first = expected.first_hit_rank[expected.relevant > 0] > 0
    assert 0.05 < missed_first.float().mean() < 0.95  # first hits neither always nor never at rank 0


@pytest.mark.parametrize("n_classes", [30, 300])
def test_query_vs_gallery_with_shared_ids_matches_brute_force(make_clustered, n_classes):
    embeddings, labels = make_clustered(seed=6, n_classes=n_classes)
    n = len(labels)
    # Queries: the first 60 %; gallery: the last 70 % (10 % of the items are on both sides, same id).
    queries, gallery = slice(0, 6 * n // 10), slice(3 * n // 10, n)
    ids = torch.arange(n)
    arguments = (embeddings[queries], labels[queries], embeddings[gallery], labels[gallery])
    expected = brute_force_summary(*arguments, ids[queries], ids[gallery], "cosine")
    result = rank_summary(*arguments, query_ids=ids[queries], gallery_ids=ids[gallery], chunk_size=50)
    assert_same_summary(result, expected)
    assert result.relevant.min() == 0  # some queries are lone, and are reported as such


def test_duplicates_rank_ahead_but_self_never():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    result = rank_summary(embeddings, torch.tensor([0, 0, 1, 1]))
    # Items 0 and 1 are identical: each finds the other first; item 3 sees both copies before item 2.
    assert result.first_hit_rank.tolist() == [0, 0, 0, 2]
    assert result.relevant.tolist() == [1, 1, 1, 1]


def test_empty_and_lone_cases():
    result = rank_summary(torch.ones(2, 3), torch.tensor([0, 1]), torch.ones(0, 3), torch.zeros(0))
    assert result.relevant.tolist() == [0, 0] and result.top_hits.shape == (2, 0)
    alone = rank_summary(torch.eye(3), torch.tensor([0, 1, 2]))
    assert alone.relevant.tolist() == [0, 0, 0]


def test_bad_input_raises_data_error():
    queries, labels = torch.ones(3, 2), torch.zeros(3)
    with pytest.raises(DataError, match="same D"):
        rank_summary(queries, labels, torch.ones(3, 4), labels)
    with pytest.raises(DataError, match="both query_ids and gallery_ids"):
        rank_summary(queries, labels, queries, labels, query_ids=torch.arange(3))


@pytest.mark.parametrize("threshold", [2.5, -2.0])  # few scores above (sparse count), most above (dense)
def test_column_side_counts_match_a_dense_count(threshold):
    later = torch.randn(64, 300, generator=torch.Generator().manual_seed(2))
    thresholds = torch.full((300,), threshold)
    maxima = later.view(8, 8, 300).amax(0)
    above = torch.zeros(300, dtype=torch.float64)
    _count_later_above(later, maxima, thresholds, above, torch.empty(64 * 300))
    assert torch.equal(above, (later > thresholds).sum(0).double())
