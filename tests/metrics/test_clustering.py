import itertools
import math

import numpy as np
import pytest
import torch

from lightning_dml.errors import DataError
from lightning_dml.metrics import clustering_metrics, pairwise_f1


def brute_force_f1(labels, clusters):
    """Pairwise F1 by visiting every unordered pair: O(N²), the independent reference."""
    true_pos = false_pos = false_neg = 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        same_class, same_cluster = labels[i] == labels[j], clusters[i] == clusters[j]
        true_pos += same_class and same_cluster
        false_pos += same_cluster and not same_class
        false_neg += same_class and not same_cluster
    precision, recall = true_pos / (true_pos + false_pos), true_pos / (true_pos + false_neg)
    return 2 * precision * recall / (precision + recall)


def test_pairwise_f1_perfect_clustering_with_renamed_clusters():
    assert pairwise_f1([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == 1.0


def test_pairwise_f1_hand_cases():
    # Same-class pairs {01, 02, 12, 34}; same-cluster pairs {01, 23, 24, 34}; shared {01, 34}: P = R = 1/2.
    assert pairwise_f1([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx(0.5)
    # One cluster for two classes of two: TP 2, FP 4, FN 0 -> P = 1/3, R = 1, F1 = 0.5.
    assert pairwise_f1(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0])) == pytest.approx(0.5)
    # All singletons for two pairs of classes: no same-cluster pair, so no true positive.
    assert pairwise_f1([0, 0, 1, 1], [0, 1, 2, 3]) == 0.0
    # All singletons on both sides: the partitions are identical.
    assert pairwise_f1([0, 1, 2], [2, 1, 0]) == 1.0


def test_pairwise_f1_matches_brute_force_pair_count():
    rng = np.random.default_rng(0)
    labels, clusters = rng.integers(0, 5, 60), rng.integers(0, 6, 60)
    assert pairwise_f1(labels, clusters) == pytest.approx(brute_force_f1(labels, clusters), abs=1e-12)


def test_separated_blobs_cluster_perfectly(make_clustered):
    embeddings, labels = make_clustered(seed=4, n_classes=6, dim=32, spread=0.05)
    assert clustering_metrics(embeddings, labels) == pytest.approx({"nmi": 1.0, "f1": 1.0})


def test_known_contingency():
    # k-means (2 clusters) splits the points at x = 5: clusters {0, 1}, {2, 3}; labels 0, 0, 0, 1.
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
    labels = torch.tensor([0, 0, 0, 1])
    result = clustering_metrics(embeddings, labels, normalize=False)
    # p(label, cluster): (0, A) 1/2, (0, B) 1/4, (1, B) 1/4; labels 3/4, 1/4; clusters 1/2, 1/2.
    mutual_information = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    label_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    cluster_entropy = math.log(2)
    expected_nmi = mutual_information / ((label_entropy + cluster_entropy) / 2)
    # Same-class pairs {01, 02, 12}; same-cluster pairs {01, 23}; shared {01}: P = 1/2, R = 1/3.
    expected_f1 = 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    assert result == pytest.approx({"nmi": expected_nmi, "f1": expected_f1})


def test_same_seed_same_result(clustered):
    embeddings, labels = clustered
    first = clustering_metrics(embeddings, labels, seed=3)
    assert clustering_metrics(embeddings, labels, seed=3) == first
    assert 0.3 < first["nmi"] < 1.0 and 0.0 < first["f1"] < 1.0


def test_bad_input_raises_data_error():
    with pytest.raises(DataError, match="1-D labels"):
        clustering_metrics(torch.ones(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="cluster ids"):
        pairwise_f1([0, 1], [0])
