"""``RetrievalModule``: the base every method shares for training hygiene, evaluation and prediction."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_metric_learning.utils.distributed import (
    DistributedLossWrapper,
    DistributedMinerWrapper,
    is_distributed,
)
from torch import nn

from lightning_dml.errors import TrainingError


def gathered_across_ranks(
    loss: nn.Module, miner: nn.Module | None = None, enabled: bool = True
) -> tuple[nn.Module, nn.Module | None]:
    """The loss and miner, in pytorch-metric-learning's distributed wrappers when ``enabled`` under DDP (so
    they see every rank's embeddings), else unchanged. Call it per step rather than storing the wrappers, so
    parameter names match single-process checkpoints."""
    if not (enabled and is_distributed()):
        return loss, miner
    return DistributedLossWrapper(loss), DistributedMinerWrapper(miner) if miner is not None else None


def lr_groups(*groups: tuple[list[nn.Parameter], float | None]) -> list[dict[str, Any]]:
    """Optimizer parameter groups from ``(parameters, lr)`` pairs: ``lr`` set where not ``None``, empty
    groups left out."""
    return [{"params": params} | ({"lr": lr} if lr is not None else {}) for params, lr in groups if params]


class RetrievalModule(L.LightningModule):
    """Base LightningModule: subclasses define ``embed`` and ``training_loss``; this class does the rest.

    Evaluation steps return ``{"embeddings", "labels", "indices"}`` (plus query/gallery roles when the set
    has them); the ``RetrievalEvaluation`` callback gathers them across ranks and computes the metrics, the
    same way for every method.

    Args:
        optimizer: optimizer factory, called with the parameter groups of :meth:`parameter_groups`.
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: step the scheduler every ``epoch`` or every ``step``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "train/loss",
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return the evaluation embeddings (B, D) of a batch of images."""
        raise NotImplementedError

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Return the scalar training loss of a batch (log extra terms with ``self.log``)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images (same as :meth:`embed`)."""
        return self.embed(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Compute the loss, refusing to step on a NaN or infinite one."""
        loss = self.training_loss(batch)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); no update was made from it and the last checkpoint is "
                "intact: lower the learning rate or check the data, then resume with --ckpt_path last"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """Return the batch's embeddings, labels and dataset indices for the evaluation callback."""
        outputs = {
            "embeddings": self.embed(batch["image"]),
            "labels": batch["label"],
            "indices": batch["index"],
        }
        if "is_query" in batch:
            outputs["is_query"], outputs["is_gallery"] = batch["is_query"], batch["is_gallery"]
        return outputs

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Same as :meth:`validation_step`."""
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Same as :meth:`validation_step`: embeddings with their labels and indices."""
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep modules and factories (optimizer partials) passed from Python out of the saved
        hyper-parameters, so that every checkpoint loads with ``weights_only=True`` (CLI runs store their
        configuration there instead)."""
        hparams = checkpoint.get("hyper_parameters", {})
        for key in [key for key, value in hparams.items() if callable(value)]:
            del hparams[key]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Return the optimizer's parameter groups (one group of everything by default)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        """Build the optimizer on :meth:`parameter_groups` and the optional scheduler."""
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
