"""``RunSummary``: one screen at the end of fit and of test with the best metrics, checkpoints and logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


def metrics_table(metrics: dict[str, float]) -> Table:
    """A table of ``{"{set}/{metric}": value}``: one row per metric, one column per set, in first-seen order.

    Missing combinations stay empty.
    """
    keys = [key.partition("/") for key in metrics]
    sets = list(dict.fromkeys(name for name, _, _ in keys))
    rows = list(dict.fromkeys(metric for _, _, metric in keys))
    table = Table(box=None, header_style="bold")
    table.add_column("metric")
    for name in sets:
        table.add_column(name, justify="right")
    for metric in rows:
        cells = [metrics.get(f"{name}/{metric}") for name in sets]
        table.add_row(metric, *("" if value is None else f"{value:.4f}" for value in cells))
    return table


def log_directory(trainer: L.Trainer) -> str | None:
    """The first logger's run directory, read locally (``trainer.log_dir`` would broadcast under DDP)."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    if isinstance(logger, WandbLogger):  # the run's own folder (offline-run-* / run-*), not save_dir
        return str(Path(logger.experiment.dir).parent)
    return getattr(logger, "log_dir", None) or logger.save_dir


class RunSummary(L.Callback):
    """Prints, on rank 0, a one-screen summary at the end of ``fit`` and of ``test``.

    The evaluation metrics of the best validation (by the checkpoint callback's ``monitor`` and ``mode``;
    the latest validation when nothing is monitored) side by side with the test metrics once tested, the
    best and last checkpoint paths, the checkpoint tested and the log directory.
    """

    def __init__(self) -> None:
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.best_by: str | None = None
        self.checkpoints: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the evaluation metrics of this validation when it is the best so far."""
        if trainer.sanity_checking:
            return
        metrics = evaluation_metrics(trainer.callback_metrics, exclude="test/")
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        if monitor is not None and monitor in metrics and monitor in self.best:
            better = metrics[monitor] > self.best[monitor]
            if not (better if checkpoint.mode == "max" else metrics[monitor] < self.best[monitor]):
                return
        self.best, self.best_epoch = metrics, trainer.current_epoch
        self.best_by = monitor if monitor in metrics else None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the summary of the training run."""
        # kept for the test summary: testing a checkpoint restores the checkpoint callback's older state
        self.checkpoints = checkpoint_lines(trainer)
        if trainer.is_global_zero:
            Console().print(self.render(trainer, tested=False))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the summary with the test metrics."""
        if trainer.is_global_zero:
            Console().print(self.render(trainer, tested=True))

    def render(self, trainer: L.Trainer, tested: bool) -> Panel:
        """The summary panel: metrics table, then checkpoints and log directory."""
        metrics = dict(self.best)
        lines = []
        if self.best_epoch is not None:
            chosen = f"the best by {self.best_by}" if self.best_by else "the last"
            lines.append(f"validation sets: epoch {self.best_epoch}, {chosen}")
        if tested:
            metrics |= evaluation_metrics(trainer.callback_metrics, include="test/")
        lines += self.checkpoints or checkpoint_lines(trainer)
        if tested:
            lines.append(f"tested weights: {trainer.ckpt_path or 'the weights in memory'}")
        lines.append(f"log directory: {log_directory(trainer) or 'none (no logger)'}")
        title = "lightning-dml: " + ("test" if tested else "fit") + " summary"
        return Panel(Group(metrics_table(metrics), Text("\n".join(lines))), title=title, expand=False)


def checkpoint_lines(trainer: L.Trainer) -> list[str]:
    """Lines naming the best checkpoint (with its score) and the last checkpoint, where they exist."""
    checkpoint, lines = trainer.checkpoint_callback, []
    if checkpoint is not None and checkpoint.best_model_path:
        score = checkpoint.best_model_score
        score = "" if score is None else f" ({checkpoint.monitor} = {float(score):.4f})"
        lines.append(f"best checkpoint: {checkpoint.best_model_path}{score}")
    if checkpoint is not None and checkpoint.last_model_path:
        lines.append(f"last checkpoint: {checkpoint.last_model_path}")
    return lines


def evaluation_metrics(
    callback_metrics: dict[str, Any], include: str | None = None, exclude: str | None = None
) -> dict[str, float]:
    """The ``{set}/{metric}`` entries of ``callback_metrics`` as floats, training metrics left out."""
    return {
        key: float(value)
        for key, value in callback_metrics.items()
        if "/" in key
        and not key.startswith("train/")
        and (include is None or key.startswith(include))
        and (exclude is None or not key.startswith(exclude))
    }
