import pytest
import torch

from lightning_dml.errors import DataError
from lightning_dml.metrics import Neighbours, count_matches, exact_knn, matching_positions

INF = float("inf")


def brute_force_knn(queries, gallery, k, metric, query_ids=None, gallery_ids=None):
    """Full-matrix reference: every score at once, same-id items set to -inf, then sorted."""
    if metric == "cosine":
        scores = (
            torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
        )
    else:
        scores = -torch.cdist(queries.double(), gallery.double()).square().float()
    if query_ids is not None:
        scores[query_ids[:, None] == gallery_ids[None, :]] = -INF
    return scores.sort(dim=1, descending=True)[0][:, :k], scores.argsort(dim=1, descending=True)[:, :k]


def test_hand_case_euclidean_leave_one_out():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])
    ids = torch.arange(4)
    result = exact_knn(points, points, 3, metric="euclidean", query_ids=ids, gallery_ids=ids)
    assert isinstance(result, Neighbours)
    assert result.indices.tolist() == [[1, 2, 3], [0, 2, 3], [1, 0, 3], [2, 1, 0]]
    assert result.scores.tolist() == [[-1, -9, -49], [-1, -4, -36], [-4, -9, -16], [-16, -36, -49]]


def test_hand_case_cosine_normalises_both_sides():
    queries = torch.tensor([[2.0, 0.0]])
    gallery = torch.tensor([[5.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    result = exact_knn(queries, gallery, 3)
    assert result.indices.tolist() == [[0, 2, 1]]
    torch.testing.assert_close(result.scores, torch.tensor([[1.0, 0.5**0.5, 0.0]]))


def test_pads_when_fewer_than_k_valid_neighbours():
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ids = torch.arange(3)
    result = exact_knn(points, points, 4, query_ids=ids, gallery_ids=ids)
    assert result.indices[:, 2:].tolist() == [[-1, -1]] * 3
    assert torch.all(result.scores[:, 2:] == -INF)
    assert torch.all(result.indices[:, :2] >= 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_matches_brute_force_for_every_chunk_size(clustered, metric, chunk_size):
    embeddings, _ = clustered
    ids = torch.arange(len(embeddings))
    expected_scores, expected_indices = brute_force_knn(embeddings, embeddings, 10, metric, ids, ids)
    result = exact_knn(
        embeddings, embeddings, 10, metric=metric, query_ids=ids, gallery_ids=ids, chunk_size=chunk_size
    )
    assert torch.equal(result.indices, expected_indices)
    torch.testing.assert_close(result.scores, expected_scores, rtol=1e-5, atol=1e-4)


def test_byte_budget_only_changes_chunking(clustered):
    embeddings, _ = clustered
    reference = exact_knn(embeddings, embeddings, 5)
    tiny_budget = exact_knn(embeddings, embeddings, 5, block_bytes=1)
    assert torch.equal(reference.indices, tiny_budget.indices)
    torch.testing.assert_close(reference.scores, tiny_budget.scores)


def test_without_ids_the_query_finds_itself_first(clustered):
    embeddings, _ = clustered
    result = exact_knn(embeddings, embeddings, 1, metric="euclidean")
    assert torch.equal(result.indices[:, 0], torch.arange(len(embeddings)))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_duplicates_are_neighbours_but_self_never(clustered, backend):
    embeddings, _ = clustered
    embeddings = torch.cat([embeddings, embeddings[:5]])  # rows n..n+4 copy rows 0..4
    n = len(embeddings) - 5
    ids = torch.arange(len(embeddings))
    result = exact_knn(
        embeddings, embeddings, len(embeddings), query_ids=ids, gallery_ids=ids, backend=backend
    )
    assert not torch.any(result.indices == ids[:, None])
    assert torch.all(result.indices[:, -1] == -1)  # only Ng - 1 valid items per query
    assert result.indices[:5, 0].tolist() == list(range(n, n + 5))
    assert result.indices[n:, 0].tolist() == list(range(5))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_and_torch_give_the_same_neighbours(clustered, metric):
    embeddings, _ = clustered
    ids = torch.arange(len(embeddings))
    by_torch = exact_knn(embeddings, embeddings, 12, metric=metric, query_ids=ids, gallery_ids=ids)
    by_faiss = exact_knn(
        embeddings, embeddings, 12, metric=metric, query_ids=ids, gallery_ids=ids, backend="faiss"
    )
    assert torch.equal(by_torch.indices, by_faiss.indices)
    torch.testing.assert_close(by_torch.scores, by_faiss.scores, rtol=1e-5, atol=1e-4)


def test_faiss_drops_several_same_id_items_and_pads():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [1.0, 0.3]])
    query_ids, gallery_ids = torch.tensor([7, 8]), torch.tensor([7, 7, 8, 9])
    for backend in ("torch", "faiss"):
        result = exact_knn(queries, gallery, 3, query_ids=query_ids, gallery_ids=gallery_ids, backend=backend)
        assert result.indices.tolist() == [[3, 2, -1], [3, 1, 0]], backend


def test_query_vs_gallery_ids_exclude_only_shared_items(clustered):
    embeddings, _ = clustered
    queries, gallery = embeddings[:40], embeddings[20:]
    query_ids, gallery_ids = torch.arange(40), torch.arange(20, len(embeddings))
    expected_scores, expected_indices = brute_force_knn(queries, gallery, 6, "cosine", query_ids, gallery_ids)
    result = exact_knn(queries, gallery, 6, query_ids=query_ids, gallery_ids=gallery_ids, chunk_size=7)
    assert torch.equal(result.indices, expected_indices)
    torch.testing.assert_close(result.scores, expected_scores)


def test_float64_input_keeps_its_precision(clustered):
    embeddings, _ = clustered
    result = exact_knn(embeddings.double(), embeddings.double(), 3, metric="euclidean")
    assert result.scores.dtype == torch.float64
    assert torch.all(result.scores[:, 0].abs() < 1e-12)  # the self-distance, exact to float64 rounding


def test_empty_gallery_gives_only_padding():
    result = exact_knn(torch.ones(2, 3), torch.ones(0, 3), 2)
    assert result.indices.tolist() == [[-1, -1], [-1, -1]]
    assert torch.all(result.scores == -INF)


def test_matching_positions_hand_case():
    positions = matching_positions(torch.tensor([5, 2, 7]), torch.tensor([7, 5, 1, 5]))
    assert positions.tolist() == [[1, 3], [-1, -1], [0, -1]]
    assert matching_positions(torch.tensor([4]), torch.tensor([1, 2])).shape == (1, 0)


def test_count_matches_hand_case():
    counts = count_matches(torch.tensor([3, 5, 9]), torch.tensor([5, 3, 5, 1]))
    assert counts.tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gallery": torch.ones(4, 2)}, "same D"),
        ({"k": 0}, "k must be"),
        ({"query_ids": torch.arange(3)}, "both query_ids and gallery_ids"),
        ({"metric": "manhattan"}, "metric must be"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"queries": torch.tensor([[float("nan")] * 3])}, "NaN"),
    ],
)
def test_bad_input_raises_data_error(kwargs, message):
    arguments = {"queries": torch.ones(3, 3), "gallery": torch.ones(4, 3), "k": 2, **kwargs}
    with pytest.raises(DataError, match=message):
        exact_knn(**arguments)
