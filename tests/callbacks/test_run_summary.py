"""The end-of-run summary: best-validation tracking, the metrics table, and what a CLI run prints."""

from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from lightning_dml.callbacks import RunSummary
from lightning_dml.callbacks.run_summary import metrics_table, references_table
from lightning_dml.cli import DMLCLI, KeyMetricProgressBar
from tests.conftest import reference_rows, summary_rows, table_rows, tensorboard_scalars


def rendered(renderable) -> str:
    """The plain text of a rich renderable."""
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def fake_trainer(metrics: dict[str, float], epoch: int, mode: str = "max") -> SimpleNamespace:
    """The trainer attributes ``RunSummary.on_validation_end`` reads."""
    return SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        current_epoch=epoch,
        callback_metrics={key: torch.tensor(value) for key, value in metrics.items()},
        checkpoint_callback=SimpleNamespace(monitor="val/map@r", mode=mode),
    )


def test_the_best_validation_by_the_checkpoint_monitor_is_kept():
    history = [0.2, 0.5, 0.4, 0.5]  # the tie at epoch 3 is not an improvement, as for ModelCheckpoint
    for mode, best_epoch in (("max", 1), ("min", 0)):
        summary = RunSummary()
        for epoch, value in enumerate(history):
            metrics = {"val/map@r": value, "val/recall@1": epoch / 10, "train/loss": 1.0}
            summary.on_validation_end(fake_trainer(metrics, epoch, mode), None)
        assert summary.best_epoch == best_epoch and summary.best_by == "val/map@r"
        assert summary.best == pytest.approx(
            {"val/map@r": history[best_epoch], "val/recall@1": best_epoch / 10}
        )


def test_without_a_monitor_the_last_validation_is_kept():
    summary = RunSummary()
    for epoch in range(3):
        trainer = fake_trainer({"val/map@r": 1.0 - epoch / 10}, epoch)
        trainer.checkpoint_callback = None
        summary.on_validation_end(trainer, None)
    assert summary.best_epoch == 2 and summary.best_by is None


def test_metrics_table_has_a_row_per_metric_and_a_column_per_set():
    table = metrics_table({"val/map@r": 0.5, "val/recall@1": 0.75, "test/map@r": 0.25})
    lines = [line.split() for line in rendered(table).splitlines() if line.strip()]
    assert lines == [["metric", "val", "test"], ["map@r", "0.5000", "0.2500"], ["recall@1", "0.7500"]]


def test_references_table_puts_pixels_and_untrained_beside_the_trained_value():
    trained = {"val_seen/map@r": 0.9, "val_seen/nmi": 0.8, "val_test/map@r": 0.4, "val_unseen/map@r": 0.3}
    references = {
        "val_seen/untrained/map@r": 0.5,
        "val_seen/pixels/map@r": 0.7,
        "val_seen/untrained/nmi": 0.25,
        "val_test/untrained/map@r": 0.45,
        "test/pixels/map@r": 0.6,  # no trained value of the set: not shown
    }
    table = references_table(trained, references)
    headers = [str(column.header) for column in table.columns]
    assert headers == [
        "metric",
        "val_seen\npixels",
        "\nuntrained",
        "\ntrained",
        "val_test\nuntrained",
        "\ntrained",
    ]
    cells = [list(column.cells) for column in table.columns]
    assert cells[0] == ["map@r", "nmi"]
    assert cells[1:] == [
        ["0.7000", ""],
        ["0.5000", "0.2500"],
        ["0.9000", "0.8000"],
        ["0.4500", ""],
        ["0.4000", ""],
    ]
    assert references_table(trained, {}) is None


def test_a_cli_fit_prints_one_summary_with_the_choosing_set_and_the_test(
    quick_args, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping in the panel
    cli = DMLCLI(
        args=[
            "fit",
            *quick_args,
            "--trainer.limit_train_batches",
            "2",
            "--evaluation.pictures.every_n_epochs",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert "fit summary" not in out and "DataLoader" not in out and "Test metric" not in out
    (test_summary,) = out.split("test summary")[1:]
    checkpoint = cli.trainer.checkpoint_callback
    best_score = f"val_seen/map@r = {float(checkpoint.best_model_score):.4f}"
    log_dir = tmp_path / "runs/quickstart/version_0"
    assert "validation: epoch 0, the best by val_seen/map@r" in test_summary
    assert f"best checkpoint: {checkpoint.best_model_path} ({best_score})" in test_summary
    assert f"last checkpoint: {log_dir}/checkpoints/last.ckpt" in test_summary
    assert f"log directory: {log_dir}" in test_summary
    assert f"tested weights: {checkpoint.best_model_path}" in test_summary
    rows = summary_rows(test_summary)
    test_map = float(cli.trainer.callback_metrics["test/map@r"])
    # val_test (same images, same weights) would repeat the test
    assert rows["metric"] == ["val_seen", "test"]
    assert float(rows["map@r"][1]) == round(test_map, 4)
    assert float(rows["map@r"][0]) == round(float(checkpoint.best_model_score), 4)
    assert table_rows(out, "map@r") == 2  # once in the metrics table, once beside its reference rows
    # the quickstart's reference rows: each validation set before training, beside the chosen validation
    references = reference_rows(test_summary)
    assert references["val_seen"] == ["val_test"]  # the set above its columns
    assert references["metric"] == ["pixels", "untrained", "trained"] * 2
    metrics = ["recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "r_precision", "map@r"]
    assert list(references)[2:] == [*metrics, "nmi", "f1"]
    assert float(references["map@r"][2]) == round(float(checkpoint.best_model_score), 4)
    logged = tensorboard_scalars(log_dir)
    for metric in [*metrics, "nmi", "f1"]:
        for column, key in enumerate(
            f"{name}/{reference}/{metric}"
            for name in ("val_seen", "val_test")
            for reference in ("pixels", "untrained")
        ):
            printed = float(references[metric][column + column // 2])  # a trained column follows each pair
            assert set(logged[key]) == {0}  # logged once, at step 0
            assert printed == pytest.approx(logged[key][0], abs=5e-5)


def test_validate_of_a_checkpoint_prints_each_metric_once_and_logs_beside_its_run(
    quick_args, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.chdir(tmp_path)
    fit = [
        "fit",
        *quick_args,
        "--trainer.limit_train_batches",
        "2",
        "--evaluation.pictures.every_n_epochs",
        "0",
    ]
    DMLCLI(args=[*fit, "--test_after_fit", "false"])
    fit_summary = capsys.readouterr().out.split("fit summary")[1]
    assert summary_rows(fit_summary)["metric"] == ["val_seen", "val_test"]
    run = tmp_path / "runs/quickstart/version_0"
    config = (run / "config.yaml").read_text()

    checkpoint = run / "checkpoints/last.ckpt"
    cli = DMLCLI(
        args=[
            "validate",
            *quick_args,
            "--ckpt_path",
            str(checkpoint),
            "--evaluation.pictures.every_n_epochs",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert "DataLoader" not in out and out.count("validate summary") == 1
    rows = summary_rows(out.split("validate summary")[1])
    assert rows["metric"] == ["val_seen", "val_test"] and table_rows(out, "map@r") == 1
    logged = cli.trainer.callback_metrics
    assert float(rows["map@r"][1]) == round(float(logged["val_test/map@r"]), 4)
    assert f"validated weights: {checkpoint}" in out
    assert (run / "validate/config.yaml").is_file() and list((run / "validate").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").read_text() == config  # the training run's config is kept
    assert sorted(path.name for path in (tmp_path / "runs/quickstart").iterdir()) == ["version_0"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]  # nothing in the working directory


def test_without_a_logger_nothing_lands_in_the_working_directory(quick_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*quick_args, "--trainer.logger", "false", "--trainer.limit_train_batches", "2"]
    DMLCLI(args=["fit", *args, "--evaluation.pictures.every_n_epochs", "0", "--test_after_fit", "false"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]
    assert list((tmp_path / "runs/checkpoints").glob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))


def test_the_progress_bar_shows_the_checkpoint_monitor():
    bar = KeyMetricProgressBar()
    trainer = SimpleNamespace(
        checkpoint_callback=SimpleNamespace(monitor="val_seen/map@r"),
        callback_metrics={"val_seen/map@r": torch.tensor(0.625), "val_seen/nmi": torch.tensor(0.5)},
        progress_bar_metrics={"train/loss": 1.5},
        loggers=[],
    )
    items = bar.get_metrics(trainer, None)
    assert items["val_seen/map@r"] == 0.625 and items["train/loss"] == 1.5 and "val_seen/nmi" not in items
