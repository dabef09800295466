"""G-DML through the CLI on digits: the teacher's run leaves targets, the student trains on them."""

from pathlib import Path

import pytest

from lightning_dml.cli import DMLCLI
from lightning_dml.errors import DataError
from tests.conftest import quick_cli_args

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(config: str, runs: Path, *args: str) -> DMLCLI:
    return DMLCLI(args=["fit", *quick_cli_args(runs, f"configs/gdml/{config}"), *args])


def test_teacher_then_student_through_the_cli(tmp_path):
    teacher = fit("digits_teacher.yaml", tmp_path, "--trainer.limit_train_batches", "40")
    run = Path(teacher.trainer.log_dir)
    assert (run / "targets.pt").is_file()
    print("target 1-NN accuracy", float(teacher.trainer.callback_metrics["train/target_1nn_accuracy"]))
    assert 0.5 < float(teacher.trainer.callback_metrics["train/target_1nn_accuracy"]) <= 1.0

    student = fit(
        "digits_student.yaml",
        tmp_path,
        "--trainer.limit_train_batches",
        "10",
        "--model.init_args.teacher",
        str(run / "targets.pt"),
    )
    metrics = student.trainer.callback_metrics
    assert {"test/recall@1", "test/map@r", "test/nmi", "test/1nn_macro_f1"} <= set(metrics)
    assert 0.0 <= float(metrics["test/1nn_macro_f1"]) <= 1.0

    (run / "targets.pt").unlink()  # from the checkpoint instead: the targets are computed and saved again
    fit(
        "digits_student.yaml",
        tmp_path,
        "--trainer.limit_train_batches",
        "2",
        "--test_after_fit",
        "false",
        "--model.init_args.teacher",
        str(run / "checkpoints/last.ckpt"),
    )
    assert (run / "targets.pt").is_file()

    with pytest.raises(DataError, match="retrain the teacher"):
        fit(
            "digits_student.yaml",
            tmp_path,
            "--data.init_args.seed",
            "3",
            "--model.init_args.teacher",
            str(run / "targets.pt"),
        )
