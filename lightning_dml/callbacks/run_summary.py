"""``RunSummary``: one screen at the end of fit, validate and test with the metrics, checkpoints and logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lightning_dml.callbacks.retrieval_evaluation import RetrievalEvaluation

#: The reference rows in the order the summary shows them, before the trained network.
REFERENCES = ("pixels", "untrained")


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


def references_table(trained: dict[str, float], references: dict[str, float]) -> Table | None:
    """What training bought: one row per metric and, for each set of ``trained`` (``{"{set}/{metric}"}``)
    that has reference rows (``{"{set}/{reference}/{metric}"}``), a column per reference (``pixels``, then
    ``untrained``) and one of the trained values; ``None`` when no such set exists."""
    validated = {key.partition("/")[0] for key in trained}
    parts = [key.split("/", 2) for key in references if key.partition("/")[0] in validated]
    if not parts:
        return None
    columns = []  # (set, heading, key prefix)
    for name in dict.fromkeys(name for name, _, _ in parts):
        kinds = [kind for kind in REFERENCES if [name, kind] in (part[:2] for part in parts)]
        columns += [(name, kind, f"{name}/{kind}/") for kind in kinds] + [(name, "trained", f"{name}/")]
    table = Table(box=None, header_style="bold")
    table.add_column("metric")
    for i, (name, heading, _) in enumerate(columns):
        table.add_column(f"{'' if i and columns[i - 1][0] == name else name}\n{heading}", justify="right")
    values = trained | references
    for metric in dict.fromkeys(metric for _, _, metric in parts):
        cells = [values.get(prefix + metric) for _, _, prefix in columns]
        table.add_row(metric, *("" if value is None else f"{value:.4f}" for value in cells))
    return table


def log_directory(trainer: L.Trainer) -> str | None:
    """The first logger's run directory, read locally (``trainer.log_dir`` would broadcast under DDP):
    a W&B run's own folder (``offline-run-*`` / ``run-*``), not its ``save_dir`` shared by all runs."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    if isinstance(logger, WandbLogger):
        return str(Path(logger.experiment.dir).parent)
    return getattr(logger, "log_dir", None) or logger.save_dir


def shared_log_directory(trainer: L.Trainer) -> str | None:
    """:func:`log_directory` as rank 0 sees it, on every rank (a W&B run exists on rank 0 only)."""
    return trainer.strategy.broadcast(log_directory(trainer) if trainer.is_global_zero else None)


class RunSummary(L.Callback):
    """Prints, on rank 0, a one-screen summary at the end of ``fit``, ``validate`` and ``test``: each
    metric once per set (Lightning's own per-dataloader tables are turned off by the CLI).

    ``fit``: the evaluation metrics of the best validation (by the checkpoint callback's ``monitor`` and
    ``mode``; the latest validation when nothing is monitored), the best and last checkpoint paths and the
    log directory; with ``test_follows`` it is left to the test summary, which shows the set that chose the
    checkpoint beside the test sets. Both show, for each validation set with reference rows (the
    ``RetrievalEvaluation``'s ``references``), a second table: the raw-pixel and untrained-network values
    before training beside the trained network's (the best validation's). ``validate``: that validation's
    metrics and the weights validated.

    Args:
        test_follows: a test runs right after ``fit`` (the CLI's ``test_after_fit``).
    """

    def __init__(self, test_follows: bool = False) -> None:
        self.test_follows = test_follows
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.best_by: str | None = None
        self.checkpoints: list[str] = []
        self.other_sets: dict[str, float] = {}  # sets evaluated outside validation (G-DML's targets)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the metrics of a ``validate`` run; in ``fit``, keep those of the best validation so far."""
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "validate":
            if trainer.is_global_zero:
                Console().print(self.render(trainer, stage="validate"))
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
        validated = {key.partition("/")[0] for key in self.best}
        self.other_sets = {
            key: value
            for key, value in evaluation_metrics(trainer.callback_metrics, exclude="test/").items()
            if key.partition("/")[0] not in validated
        }
        if trainer.is_global_zero and not self.test_follows:
            Console().print(self.render(trainer, stage="fit"))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the summary with the test metrics."""
        if trainer.is_global_zero:
            Console().print(self.render(trainer, stage="test"))

    def render(self, trainer: L.Trainer, stage: str) -> Panel:
        """The summary panel of ``stage`` (fit, validate or test): metrics, checkpoints, log directory."""
        if stage == "validate":
            metrics = evaluation_metrics(trainer.callback_metrics)
            lines = [f"validated weights: {trainer.ckpt_path or 'the weights in memory'}"]
        else:
            metrics, lines = self.validation_metrics(stage) | self.other_sets, []
            if self.best_epoch is not None:
                chosen = f"the best by {self.best_by}" if self.best_by else "the last"
                lines.append(f"validation: epoch {self.best_epoch}, {chosen}")
            lines += self.checkpoints or checkpoint_lines(trainer)
        if stage == "test":
            metrics |= evaluation_metrics(trainer.callback_metrics, include="test/")
            lines.append(f"tested weights: {trainer.ckpt_path or 'the weights in memory'}")
        lines.append(f"log directory: {log_directory(trainer) or 'none (no logger)'}")
        parts = [metrics_table(metrics)]
        references = references_table(self.best, reference_metrics(trainer)) if stage != "validate" else None
        if references is not None:
            heading = "reference rows, before training (raw pixels, the untrained network), and trained:"
            parts += [Text(f"\n{heading}"), references, Text("")]
        title = f"lightning-dml: {stage} summary"
        return Panel(Group(*parts, Text("\n".join(lines))), title=title, expand=False)

    def validation_metrics(self, stage: str) -> dict[str, float]:
        """The best validation's metrics to show: all sets after ``fit``; beside a test, only the set that
        chose the checkpoint (a validation of the test classes would repeat the test's numbers)."""
        if stage == "fit" or self.best_by is None:
            return dict(self.best)
        chooser = self.best_by.partition("/")[0] + "/"
        return {key: value for key, value in self.best.items() if key.startswith(chooser)}


def reference_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The reference rows of the trainer's ``RetrievalEvaluation`` (none without one)."""
    evaluations = (c for c in trainer.callbacks if isinstance(c, RetrievalEvaluation))
    return next((evaluation.reference_metrics for evaluation in evaluations), {})


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
