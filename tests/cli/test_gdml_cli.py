"""G-DML through the CLI on digits: the teacher's run leaves targets, the student trains on them."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score, recall_score

from lightning_dml.cli import DMLCLI
from lightning_dml.errors import DataError
from tests.conftest import (
    GDML_DIGITS_STUDENT,
    GDML_DIGITS_TEACHER,
    quick_cli_args,
    summary_rows,
    tensorboard_scalars,
)
from tests.reference import assert_logged, brute_force_metrics, embed_loader

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(configs: tuple[str, ...], runs: Path, *args: str) -> DMLCLI:
    return DMLCLI(args=["fit", *quick_cli_args(runs, *configs), *args])


def test_teacher_then_student_through_the_cli(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping in the summary panel
    caplog.set_level(logging.INFO)
    teacher = fit(GDML_DIGITS_TEACHER, tmp_path, "--trainer.limit_train_batches", "40")
    run = Path(teacher.trainer.log_dir)
    assert (run / "targets.pt").is_file()
    (accuracy,) = tensorboard_scalars(run)["targets/1nn_accuracy"].values()
    print("target 1-NN accuracy", accuracy)
    assert 0.5 < accuracy <= 1.0
    # the run says where the targets went, and its summary shows their accuracy
    assert f"G-DML targets written to {run / 'targets.pt'} (leave-one-out 1-NN accuracy {accuracy:.4f})" in (
        caplog.text
    )
    summary = capsys.readouterr().out.split("test summary")[1]
    rows = summary_rows(summary)
    assert rows["metric"] == ["targets", "test"] and rows["1nn_accuracy"] == [f"{accuracy:.4f}"]
    # and it was tested like any method, label-conditioned (its own unit test checks the embeddings)
    assert {"test/map@r", "test/1nn_macro_f1"} <= set(teacher.trainer.callback_metrics)

    student = fit(
        GDML_DIGITS_STUDENT,
        tmp_path,
        "--trainer.limit_train_batches",
        "10",
        "--model.init_args.teacher",
        str(run / "targets.pt"),
    )
    metrics = student.trainer.callback_metrics
    assert {"test/recall@1", "test/map@r", "test/nmi", "test/1nn_macro_f1"} <= set(metrics)
    # the test images (queries) searched among the training images (gallery), recomputed by brute force
    test = embed_loader(student.model, student.datamodule.test_dataloader())
    embeddings, labels, query = test["embeddings"], test["label"], test["is_query"].astype(bool)
    queries = sum(int(0.3 * n) for n in np.bincount(load_digits().target))  # test_fraction 0.3 of each digit
    assert (query.sum(), (~query).sum()) == (queries, 1797 - queries)
    distances = np.linalg.norm(embeddings[query][:, None] - embeddings[~query][None], axis=-1)
    truth, predicted = labels[query], labels[~query][distances.argmin(1)]
    expected = brute_force_metrics(embeddings, labels, query, ~query, metric="euclidean") | {
        "1nn_macro_recall": recall_score(truth, predicted, labels=np.unique(truth), average="macro"),
        "1nn_macro_f1": f1_score(truth, predicted, labels=np.unique(truth), average="macro"),
    }
    assert_logged(metrics, "test", expected)

    # from the teacher's checkpoint instead: the same targets, computed in memory, nothing written
    from_checkpoint = fit(
        GDML_DIGITS_STUDENT,
        tmp_path,
        "--trainer.limit_train_batches",
        "2",
        "--test_after_fit",
        "false",
        "--model.init_args.teacher",
        str(run / "checkpoints/last.ckpt"),
    )
    saved = torch.load(run / "targets.pt", weights_only=True)["targets"]
    torch.testing.assert_close(from_checkpoint.model.targets.cpu(), saved)

    with pytest.raises(DataError, match="retrain the teacher"):
        fit(
            GDML_DIGITS_STUDENT,
            tmp_path,
            "--data.init_args.seed",
            "3",
            "--model.init_args.teacher",
            str(run / "targets.pt"),
        )
