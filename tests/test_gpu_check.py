"""benchmarks/gpu_check.py runs end to end at toy size on CPU, as it will on a GPU machine."""

import json

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.retrieval_eval import clustered_embeddings, shuffled, skewed_sizes
from tests.reference import brute_force_metrics


@pytest.mark.usefixtures("one_thread")
def test_the_gpu_check_measures_every_row_and_its_evaluation_is_exact(tmp_path):
    gpu_check.main(["--toy", "--warmup", "1", "--steps", "1", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    training = [*results["resnet50_ms"].values(), results["resnet50_ms_cache"], results["deml_release"]]
    assert len(training) == 5 and all(row["images_per_second"] > 0 for row in training)
    # the toy scenario, rebuilt here, against the float64 brute force
    generator = torch.Generator().manual_seed(0)
    sizes = skewed_sizes(600, 3000, 2, 12, generator)
    embeddings, labels = shuffled(*clustered_embeddings(sizes, 64, (0.5, 2.5), generator), generator)
    expected = brute_force_metrics(embeddings, labels, recall_at=(1, 10, 100), metric="cosine")
    evaluation = results["sop_evaluation"]
    assert evaluation["items"] == 3000
    assert {name: evaluation[name] for name in expected} == pytest.approx(expected, abs=1e-9)
    assert "DeML release" in (tmp_path / "gpu_check.md").read_text()
