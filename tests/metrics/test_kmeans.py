import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from lightning_dml.errors import DataError
from lightning_dml.metrics.kmeans import SEEDING_ROUNDS, kmeans


def test_hand_case_two_pairs():
    points = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    assignments, inertia = kmeans(points, 2)
    assert assignments[0] == assignments[1] != assignments[2] == assignments[3]
    assert inertia == pytest.approx(4.0)  # each point is 1 from its pair's midpoint


@pytest.mark.parametrize(("n_clusters", "spread"), [(8, 0.6), (3 * SEEDING_ROUNDS, 0.4)])
def test_close_to_scikit_learn_greedy_kmeans_plus_plus(n_clusters, spread):
    # 20 points around each of n_clusters random centres; with 96 clusters seeding runs in batches of 3.
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n_clusters).repeat_interleave(20)
    points = torch.randn(n_clusters, 16, generator=generator)[labels]
    points += spread * torch.randn(len(labels), 16, generator=generator)
    assignments, inertia = kmeans(points, n_clusters, seed=0, n_init=3)
    reference = KMeans(n_clusters=n_clusters, n_init=3, random_state=0).fit(points.numpy())
    assert inertia <= 1.05 * reference.inertia_
    nmi = normalized_mutual_info_score(labels, assignments)
    assert nmi == pytest.approx(normalized_mutual_info_score(labels, reference.labels_), abs=0.01)


def test_duplicates_and_more_clusters_than_distinct_points():
    distinct = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    points = distinct.repeat(4, 1)  # 12 points at 3 positions
    assignments, inertia = kmeans(points, 3)
    assert inertia == 0.0 and len(set(assignments.tolist())) == 3
    assignments, inertia = kmeans(points, 5)  # two clusters must stay empty or share a position
    assert inertia == 0.0 and assignments.max() < 5


def test_seeded_and_independent_of_chunking(make_clustered):
    points, _ = make_clustered(seed=1, n_classes=40, dim=8)
    first, first_inertia = kmeans(points, 40, seed=3)
    again, again_inertia = kmeans(points, 40, seed=3, block_bytes=1)  # one point per chunk
    assert torch.equal(first, again) and first_inertia == pytest.approx(again_inertia, rel=1e-6)


def test_bad_cluster_count_raises_data_error():
    with pytest.raises(DataError, match="n_clusters"):
        kmeans(torch.zeros(3, 2), 4)
