"""The sharded ranking: 2 and 4 gloo processes on CPU give exactly the 1-process numbers, which match the
brute-force float64 references (``tests.reference``) and the single-process ``rank``."""

import pytest
import torch

from lightning_dml.metrics import rank
from lightning_dml.metrics.sharded import sharded_rank
from tests.metrics import sharded_worker
from tests.reference import tie_averaged_metrics

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision", "map@r")
TIED = {"lattice", "collapsed"}


@pytest.fixture(scope="module")
def single():
    return sharded_worker.run(1, "")


# Not lattice_cosine: its cosines equal in real arithmetic differ in float64 by the formula that computes
# them (the reference's matrix product, our row-wise sums), so the float64 tie groups differ.
@pytest.mark.parametrize("name", [name for name in sharded_worker.scenarios() if name != "lattice_cosine"])
def test_one_process_matches_the_float64_brute_force(single, name):
    scenario = sharded_worker.scenarios()[name]
    embeddings, labels = scenario["data"]
    roles = (scenario.get("is_query"), scenario.get("is_gallery"))
    trials = 200 if name in TIED else 1
    expected, error = tie_averaged_metrics(
        embeddings, labels, *roles, recall_at=(1, 2, 4, 8), metric=scenario["metric"], trials=trials
    )
    for metric in (*METRICS, "1nn_macro_recall"):
        assert abs(single[name]["metrics"][metric] - expected[metric]) <= 5 * error[metric] + 1e-12, metric


@pytest.mark.parametrize("name", ["clustered", "lattice", "collapsed", "far_euclidean"])
def test_one_process_equals_the_unsharded_ranking(name):
    scenario = sharded_worker.scenarios()[name]
    embeddings, labels = scenario["data"]
    ids = torch.arange(len(labels))
    options = {"metric": scenario["metric"], "votes": True}
    expected = rank(embeddings, labels, query_ids=ids, **options)
    found = sharded_rank(embeddings, labels, ids, embeddings, labels, ids, queries_per_step=23, **options)
    counted = expected.relevant > 0
    for field in ("above", "tied", "tied_relevant"):
        assert torch.equal(getattr(found, field)[counted], getattr(expected, field)[counted]), field
    for field in ("relevant", "votes"):
        torch.testing.assert_close(getattr(found, field), getattr(expected, field), rtol=0, atol=1e-15)
    for field in ("average_precision", "r_precision"):
        torch.testing.assert_close(
            getattr(found, field), getattr(expected, field), rtol=0, atol=1e-15, equal_nan=True
        )


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_processes_equal_one_process_exactly(single, world_size, tmp_path):
    sharded = sharded_worker.run(world_size, str(tmp_path / "results.pt"))
    for name, result in single.items():
        assert sharded[name]["metrics"] == result["metrics"], name
        for field, values in result["fields"].items():
            assert torch.equal(sharded[name]["fields"][field].nan_to_num(-1), values.nan_to_num(-1)), (
                name,
                field,
            )
