"""``lightning-dml predict`` writes the embeddings: in order, each image once, also under 2-process DDP."""

import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_dml.cli import DMLCLI, main
from lightning_dml.data import Digits
from lightning_dml.inference import load_embedder, read_embeddings
from tests.cli.test_cli import run
from tests.cli.test_ddp_cli import DDP
from tests.conftest import quick_cli_args

# Digits 4–9 are 1,077 test images: not divisible by 2 ranks nor by the batch of 100, so DDP pads.
DATA = ["--data.init_args.train_classes", "[0, 1, 2, 3]", "--data.init_args.eval_batch_size", "100"]
SHORT_FIT = [
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "0",
    "--test_after_fit",
    "false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short CLI training run: its working folder, arguments and last checkpoint."""
    folder = tmp_path_factory.mktemp("run")
    args = quick_cli_args(folder / "runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        DMLCLI(args=["fit", *args, *SHORT_FIT])
    return folder, args, folder / "runs/quickstart/version_0/checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def single_process(trained):
    """The 1,077 test images' embeddings written by a 1-process predict."""
    folder, args, checkpoint = trained
    output = folder / "single/embeddings.npz"
    main(["predict", *args, *DATA, "--ckpt_path", str(checkpoint), "--prediction.output", str(output)])
    return read_embeddings(output)


def test_predict_writes_the_test_set_in_order_with_the_model_embeddings(trained, single_process):
    folder, _, checkpoint = trained
    assert not list((folder / "runs").rglob("*.npz"))  # fit writes no predictions
    labels = load_digits().target
    np.testing.assert_array_equal(single_process["indices"], np.arange(1077))
    np.testing.assert_array_equal(single_process["labels"], labels[labels >= 4])
    data = Digits(train_classes=[0, 1, 2, 3])
    data.setup("predict")
    images = torch.stack([data.test_set[i]["image"] for i in range(len(data.test_set))])
    with torch.no_grad():
        expected = load_embedder(checkpoint).embed(images)
    np.testing.assert_allclose(single_process["embeddings"], expected.numpy(), atol=1e-5)


def test_predict_writes_into_the_checkpoints_run_and_says_where(trained, tmp_path, monkeypatch, caplog):
    _, args, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    main(["predict", *args, "--ckpt_path", str(checkpoint)])
    output = checkpoint.parent.parent / "predict/embeddings.npz"  # <run>/predict/, beside the training logs
    columns = read_embeddings(output)
    assert columns["embeddings"].shape == (896, 64)  # the quickstart's test set: digits 5–9
    assert f"Wrote 896 embeddings to {output}" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing in the working directory


def test_two_process_predict_writes_each_image_once_like_one_process(trained, single_process):
    folder, args, checkpoint = trained
    output = folder / "ddp/embeddings.npz"
    result = run(
        "lightning-dml",
        "predict",
        *args,
        *DATA,
        *DDP,
        "--ckpt_path",
        str(checkpoint),
        "--prediction.output",
        str(output),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    distributed, single = read_embeddings(output), single_process
    assert set(distributed) == set(single) == {"embeddings", "labels", "indices"}
    np.testing.assert_array_equal(distributed["indices"], single["indices"])
    np.testing.assert_array_equal(distributed["labels"], single["labels"])
    np.testing.assert_allclose(distributed["embeddings"], single["embeddings"], atol=1e-5)
    assert list(output.parent.iterdir()) == [output]
