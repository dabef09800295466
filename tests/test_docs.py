"""The documentation points at files that exist and configs that build."""

import re

import pytest
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

from lightning_dml.cli import DMLCLI
from lightning_dml.methods import DeML
from tests.conftest import DEML_DIGITS, REPO, config_args, quick_cli_args

DOCUMENTS = [REPO / "README.md", *REPO.glob("configs/**/*.yaml"), *REPO.glob("benchmarks/*.py")]
CONFIG_PATH = re.compile(r"configs/[\w/.-]+\.yaml")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_config_a_document_names_exists(document):
    missing = {name for name in CONFIG_PATH.findall(document.read_text()) if not (REPO / name).is_file()}
    assert not missing


def test_the_deml_digits_u512_overlay_builds_one_stream_one_learner_as_wide_as_deml():
    deml = DMLCLI(args=config_args(*DEML_DIGITS), run=False).model
    u512 = DMLCLI(args=config_args(*DEML_DIGITS, "configs/deml/u512_small.yaml"), run=False).model
    assert isinstance(u512, DeML) and u512.hparams.streams == u512.hparams.learners == 1
    width = deml.hparams.streams * deml.hparams.learners * deml.hparams.embedding_size
    assert u512.hparams.embedding_size == width


def test_the_normalized_softmax_overlay_builds_one_proxy_per_training_class_of_the_embeddings_width():
    configs = ["--config", str(REPO / "configs/readouts/fashion_mnist.yaml")]
    configs += ["--config", str(REPO / "configs/readouts/normalized_softmax.yaml")]
    model = DMLCLI(
        args=[*configs, "--data.init_args.root", str(REPO.parent / "shared/datasets")], run=False
    ).model
    assert isinstance(model.loss, NormalizedSoftmaxLoss)
    assert tuple(model.loss.W.shape) == (model.hparams.embedding_size, 5)  # classes 0–4 train
    assert model.loss_lr == 0.01


def test_the_neighbourhood_overlay_regularises_a_head_reading_the_grid():
    from lightning_dml.losses import NeighbourhoodPreservation

    overlays = ["fashion_mnist", "normalized_softmax", "grid_head", "neighbourhood"]
    configs = [arg for name in overlays for arg in ("--config", str(REPO / f"configs/readouts/{name}.yaml"))]
    root = str(REPO.parent / "shared/datasets")
    model = DMLCLI(args=[*configs, "--data.init_args.root", root], run=False).model
    assert isinstance(model.regulariser, NeighbourhoodPreservation) and model.regulariser.weight == 1.0
    assert model.backbone.out_features == 128 * 7 * 7  # the head, and the regulariser, read the 7×7 grid


def test_the_readme_python_snippet_runs_after_the_quickstart_and_predict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = quick_cli_args(tmp_path / "runs")
    DMLCLI(args=["fit", *args, "--trainer.limit_train_batches", "2", "--test_after_fit", "false"])
    checkpoint = "runs/quickstart/version_0/checkpoints/last.ckpt"
    DMLCLI(args=["predict", *args, "--ckpt_path", checkpoint])
    (snippet,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["ids"].shape == (8, 10) and (tmp_path / "embedder.onnx").is_file()
