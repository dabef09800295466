"""The end-of-run summary: best-validation tracking, the metrics table, and what a CLI run prints."""

from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from lightning_dml.callbacks import RunSummary
from lightning_dml.callbacks.run_summary import metrics_table
from lightning_dml.cli import DMLCLI, KeyMetricProgressBar


def rendered(renderable) -> str:
    """The plain text of a rich renderable."""
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def fake_trainer(metrics: dict[str, float], epoch: int, mode: str = "max") -> SimpleNamespace:
    """The trainer attributes ``RunSummary.on_validation_end`` reads."""
    return SimpleNamespace(
        sanity_checking=False,
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


def test_a_cli_fit_prints_the_best_metrics_checkpoint_and_log_directory(
    quick_args, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping in the panel
    cli = DMLCLI(
        args=["fit", *quick_args, "--trainer.limit_train_batches", "2", "--pictures.every_n_epochs", "0"]
    )
    fit_summary, test_summary = capsys.readouterr().out.split("fit summary")[1].split("test summary")
    checkpoint = cli.trainer.checkpoint_callback
    best_score = f"val_seen/map@r = {float(checkpoint.best_model_score):.4f}"
    log_dir = tmp_path / "runs/quickstart/version_0"
    for text in (fit_summary, test_summary):
        assert "validation sets: epoch 0, the best by val_seen/map@r" in text
        assert f"best checkpoint: {checkpoint.best_model_path} ({best_score})" in text
        assert f"last checkpoint: {log_dir}/checkpoints/last.ckpt" in text
        assert f"log directory: {log_dir}" in text
    assert f"tested weights: {checkpoint.best_model_path}" in test_summary
    cells = [line.strip("│ ").split() for line in test_summary.splitlines()]
    rows = {cell[0]: cell[1:] for cell in cells if cell}
    test_map = float(cli.trainer.callback_metrics["test/map@r"])
    assert rows["metric"] == ["val_seen", "val_test", "test"]
    assert float(rows["map@r"][2]) == round(test_map, 4)
    assert float(rows["map@r"][0]) == round(float(checkpoint.best_model_score), 4)


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
