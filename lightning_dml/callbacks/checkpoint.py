"""``LatestAndBestCheckpoint``: ``last.ckpt`` holds the latest epoch, the best checkpoints are kept apart."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lightning_dml.callbacks.run_summary import shared_log_directory
from lightning_dml.errors import ConfigError


class LatestAndBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` (with ``save_last: true``) is rewritten after every
    validation, or every training epoch when there is none.

    Lightning's own rewrites it only when a top-k checkpoint is saved at the same step, so ``last.ckpt``
    stayed at the best epoch and ``--ckpt_path last`` resumed from there. The top-k (best) checkpoints are
    saved as Lightning does.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse ``save_last: link``, which points ``last.ckpt`` at the newest top-k checkpoint instead;
        without a ``dirpath``, keep a W&B run's checkpoints in its own folder (Lightning would put them in
        ``save_dir/project/id``, outside it)."""
        if self.save_last == "link":
            raise ConfigError("save_last: link points last.ckpt at a best checkpoint; set save_last: true")
        if self.dirpath is None and trainer.loggers and isinstance(trainer.loggers[0], WandbLogger):
            self.dirpath = str(Path(shared_log_directory(trainer), "checkpoints"))
        super().setup(trainer, pl_module, stage)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the best checkpoints as Lightning does, then the latest one."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the best checkpoints as Lightning does, then the latest one when no validation follows."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def _save_latest(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
