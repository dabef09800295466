"""G-DML through the CLI on digits: the teacher's run leaves targets, the student trains on them."""

from pathlib import Path

import pytest
import torch

from lightning_dml.cli import DMLCLI
from lightning_dml.errors import DataError

CONFIGS = Path(__file__).resolve().parents[2] / "configs/gdml"
QUICK = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine torch's second thread mostly waits (25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(config: str, runs: Path, *args: str) -> DMLCLI:
    return DMLCLI(
        args=[
            "fit",
            "--config",
            str(CONFIGS / config),
            *QUICK,
            "--trainer.logger.init_args.save_dir",
            str(runs),
            *args,
        ]
    )


def test_teacher_then_student_through_the_cli(tmp_path):
    teacher = fit(
        "digits_teacher.yaml", tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "40"
    )
    run = Path(teacher.trainer.log_dir)
    assert (run / "targets.pt").is_file()
    print("target 1-NN accuracy", float(teacher.trainer.callback_metrics["train/target_1nn_accuracy"]))
    assert 0.5 < float(teacher.trainer.callback_metrics["train/target_1nn_accuracy"]) <= 1.0

    student = fit(
        "digits_student.yaml",
        tmp_path,
        "--trainer.max_epochs",
        "1",
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
        "--trainer.max_epochs",
        "1",
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
