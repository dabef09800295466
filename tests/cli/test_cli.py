"""The ``lightning-dml`` CLI end to end on scikit-learn's digits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dml.cli import DMLCLI, main
from lightning_dml.inference import load_embedder
from tests.conftest import REPO
from tests.reference import reference_metrics

QUICKSTART = REPO / "configs/quickstart.yaml"
LOSS_CONFIGS = sorted((REPO / "configs/losses").glob("*.yaml"))


def run(*args: str) -> subprocess.CompletedProcess:
    """Run a command on one thread (as the tests in this process) and return it, with text output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)


def test_fit_then_test_from_best_checkpoint_through_the_console_script(quick_args, tmp_path, one_thread):
    fit = run("lightning-dml", "fit", *quick_args, "--trainer.max_epochs", "2")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "test summary" in fit.stdout and "DataLoader" not in fit.stdout  # fit ends with test, printed once
    checkpoints = sorted((tmp_path / "runs/quickstart").glob("version_*/checkpoints/*.ckpt"))
    assert {p.name for p in checkpoints} >= {"last.ckpt"} and len(checkpoints) == 2
    assert (checkpoints[0].parents[1] / "config.yaml").exists()  # the resolved config is saved with the run
    best = next(p for p in checkpoints if p.name != "last.ckpt")
    # --verbose true: Lightning's own table, whose full-precision values are compared below
    test = run(
        sys.executable,
        "-m",
        "lightning_dml",
        "test",
        *quick_args,
        "--ckpt_path",
        str(best),
        "--verbose",
        "true",
    )
    assert test.returncode == 0, test.stderr[-3000:]
    metrics = {
        line.split("│")[1].strip(): float(line.split("│")[2])
        for line in test.stdout.splitlines()
        if line.count("│") == 3 and "test/" in line
    }
    assert set(metrics) == {
        "test/recall@1",
        "test/recall@2",
        "test/recall@4",
        "test/recall@8",
        "test/precision@1",
        "test/r_precision",
        "test/map@r",
        "test/nmi",
        "test/f1",
    }
    # the printed retrieval metrics are the best checkpoint's, recomputed by brute force on the digits 5-9
    data = DMLCLI(args=quick_args, run=False).datamodule
    data.setup("test")
    assert data.test_set.class_ids.unique().tolist() == [5, 6, 7, 8, 9]
    expected = reference_metrics(load_embedder(best), data.test_dataloader())
    assert {name: metrics[f"test/{name}"] for name in expected} == pytest.approx(expected, abs=1e-6)


def test_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(quick_args, tmp_path):
    DMLCLI(args=["fit", *quick_args, "--test_after_fit", "false"])
    last = tmp_path / "runs/quickstart/version_0/checkpoints/last.ckpt"
    steps = torch.load(last, weights_only=True)["global_step"]
    resume = ["--trainer.max_epochs", "2", "--ckpt_path", "last", "--test_after_fit", "false"]
    cli = DMLCLI(args=["fit", *quick_args, *resume])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 2 * steps
    assert cli.trainer.logger.log_dir == str(last.parents[1])  # logs continue in version_0
    assert torch.load(last, weights_only=True)["global_step"] == 2 * steps


@pytest.mark.parametrize("loss_config", LOSS_CONFIGS, ids=lambda p: p.stem)
def test_each_loss_config_stacks_on_the_quickstart_and_trains(quick_args, loss_config):
    cli = DMLCLI(
        args=[
            "fit",
            *quick_args,
            "--config",
            str(loss_config),
            "--trainer.limit_train_batches",
            "2",
            "--test_after_fit",
            "false",
        ]
    )
    assert type(cli.model.loss).__name__ in loss_config.read_text()
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_loss_parameters_get_their_own_learning_rate(quick_args):
    cli = DMLCLI(
        args=[
            "fit",
            *quick_args,
            "--config",
            str(REPO / "configs/losses/margin.yaml"),
            "--trainer.limit_train_batches",
            "2",
            "--test_after_fit",
            "false",
        ]
    )
    beta = cli.model.loss.beta
    groups = cli.trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups if any(p is beta for p in g["params"])] == [0.0005]


def test_print_config_shows_the_resolved_omegaconf_interpolation(tmp_path, capsys):
    config = tmp_path / "interpolated.yaml"
    config.write_text(
        "model:\n  init_args:\n    embedding_size: 32\n    hidden_size: ${model.init_args.embedding_size}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs/quickstart.yaml"),
                "--config",
                str(config),
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    assert "hidden_size: 32" in capsys.readouterr().out


def test_missing_dataset_is_one_line_naming_the_fix(tmp_path: Path):
    result = run(
        "lightning-dml",
        "validate",
        "--model",
        "lightning_dml.methods.MetricLearning",
        "--model.backbone",
        "lightning_dml.models.SmallCNN",
        "--model.loss",
        "pytorch_metric_learning.losses.ContrastiveLoss",
        "--data",
        "lightning_dml.data.FashionMNIST",
        "--data.root",
        str(tmp_path / "nowhere"),
        "--trainer.logger",
        "false",
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "download: true" in last and "nowhere" in last
    assert "Traceback" not in result.stderr


def test_impossible_class_split_stops_in_one_line_before_training(quick_args, tmp_path):
    result = run(
        "lightning-dml", "fit", *quick_args, "--data.init_args.train_classes", "[0,1,2,3,4,5,6,7,8,9]"
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "train_classes" in line]
    assert line == result.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: zero-shot") and "picks 10 of the 10 classes" in line and "closed_set" in line
    )
    runs = tmp_path / "runs"
    assert not list(runs.rglob("*.ckpt"))
    for events in runs.rglob("events.out.tfevents*"):  # no step was taken, nothing was logged
        assert not EventAccumulator(str(events)).Reload().Tags()["scalars"]


def test_unknown_class_id_stops_in_one_line_naming_the_valid_ones(quick_args, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *quick_args, "--data.init_args.train_classes", "[0, 1, 42]"])
    assert exit_info.value.code == "error: train_classes names unknown classes 42; the valid classes are 0–9"
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_csv_and_offline_wandb_loggers_record_the_metrics(quick_args, tmp_path):
    import wandb  # here: importing wandb takes a second, for this test only

    runs = str(tmp_path / "runs")
    save_dir = ["--trainer.logger.init_args.save_dir", runs]
    csv = ["--config", str(REPO / "configs/loggers/csv.yaml"), *save_dir]
    DMLCLI(args=["fit", *quick_args, *csv, "--test_after_fit", "false"])
    (metrics,) = (tmp_path / "runs/lightning_dml").glob("version_0/metrics.csv")
    assert "val_seen/map@r" in metrics.read_text().splitlines()[0]
    wandb_config = ["--config", str(REPO / "configs/loggers/wandb.yaml"), *save_dir]
    cli = DMLCLI(args=["fit", *quick_args, *wandb_config, "--test_after_fit", "false"])
    cli.trainer.logger.experiment.finish()
    wandb.teardown()  # wandb's service process writes the run file: under load it may not be flushed before
    (records,) = (tmp_path / "runs/wandb").glob("offline-run-*/run-*.wandb")  # protobuf records
    assert b"val_seen/map@r" in records.read_bytes()
