"""``RetrievalModule``: the base every method shares for training hygiene, evaluation and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
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


def with_bias_groups(
    groups: list[dict[str, Any]], biases: list[nn.Parameter], lr_mult: float
) -> list[dict[str, Any]]:
    """Each parameter group split in two: the parameters in ``biases`` move to a copy of the group with
    ``lr_mult`` and no weight decay (Caffe's ``lr_mult``/``decay_mult: 0`` on a bias); empty groups left
    out."""
    bias_ids = {id(p) for p in biases}
    split = []
    for group in groups:
        rest = {**group, "params": [p for p in group["params"] if id(p) not in bias_ids]}
        bias = {**group, "params": [p for p in group["params"] if id(p) in bias_ids]}
        split += [g for g in (rest, bias | {"lr_mult": lr_mult, "weight_decay": 0.0}) if g["params"]]
    return split


def rescaled(lr: float, old: float, new: float) -> float:
    """A learning rate moved from a schedule based on ``old`` to one based on ``new``: ``lr * new / old``
    (``new`` when ``old`` is 0)."""
    return lr * new / old if old else new


class RetrievalModule(L.LightningModule):
    """Base LightningModule: subclasses define ``embed`` and ``training_loss``; this class does the rest.

    Evaluation steps return ``{"embeddings", "labels", "indices"}`` (plus query/gallery roles when the set
    has them); the ``RetrievalEvaluation`` callback gathers them across ranks and computes the metrics, the
    same way for every method.

    Args:
        optimizer: optimizer factory, called with the parameter groups of :meth:`parameter_groups`.
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: step the scheduler every ``epoch`` or every ``step``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches; by default
            ``train/epoch_loss``, the mean training loss of the epoch (``train/loss`` is the last step's).
        channels_last: keep the network's weights, hence its activations, in channels-last memory format
            (faster convolutions on GPU tensor cores, notably with ``precision: bf16-mixed``).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "train/epoch_loss",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        #: Learning rate of each optimizer parameter group as configured (before any scheduler acts).
        self.configured_lrs: list[float] | None = None
        self._checkpoint_lrs: list[float] | None = None

    @property
    def pretrained_cfg(self) -> dict[str, Any] | None:
        """The backbone's ``pretrained_cfg`` (timm's format: ``mean``, ``std``, ``input_size``): that of the
        first child module carrying one (the backbone; DeML's network keeps its backbone's), ``None`` when
        none does (small CNNs, the GEMINI teacher)."""
        configs = (getattr(child, "pretrained_cfg", None) for child in self.children())
        return next((config for config in configs if config is not None), None)

    def configure_model(self) -> None:
        """Store the network's weights in channels-last memory format when ``channels_last``: a convolution
        with channels-last weights gives channels-last outputs, so activations follow from the first layer
        (the batches need no hook of their own, which would displace the data module's)."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return the evaluation embeddings (B, D) of a batch of images."""
        raise NotImplementedError

    def embed_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Return the evaluation embeddings (B, D) of an evaluation batch: :meth:`embed` of its images (a
        method that needs more of the batch, as the GEMINI teacher its labels, overrides this)."""
        return self.embed(batch["image"])

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
            raise TrainingError(self._non_finite_loss_message(loss.item()))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        self.log("train/epoch_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return loss

    def _non_finite_loss_message(self, loss: float) -> str:
        callback = self.trainer.checkpoint_callback
        saved = callback and (callback.last_model_path or callback.best_model_path)
        lower_lr = "a lower learning rate (--model.init_args.optimizer.init_args.lr)"
        if saved and Path(saved).is_file():
            advice = (
                f"checkpoint {saved} was saved before it: resume from it with {lower_lr} and --ckpt_path "
                f"{saved} (the configured learning rate replaces the checkpoint's)"
            )
        else:
            advice = f"no checkpoint was saved yet: start again with {lower_lr}"
        return (
            f"the training loss became {loss} at step {self.global_step} (epoch {self.current_epoch}) and no "
            f"update was made from it; {advice}, or check the data"
        )

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """Return the batch's embeddings, labels and dataset indices for the evaluation callback."""
        outputs = {
            "embeddings": self.embed_batch(batch),
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
        checkpoint["configured_lrs"] = self.configured_lrs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the learning rates the checkpoint's run was configured with, for :meth:`on_train_start`."""
        self._checkpoint_lrs = checkpoint.get("configured_lrs")

    def on_train_start(self) -> None:
        """On resume, apply each configured learning rate that differs from the checkpoint run's: the group's
        rate and its scheduler's base rate are scaled by the ratio (so a schedule goes on from where it was),
        with a log line."""
        saved, self._checkpoint_lrs = self._checkpoint_lrs, None
        # only a resumed fit restores the optimizer: weights loaded otherwise train at the configured rates
        if self.trainer.ckpt_path is None or saved is None or len(saved) != len(self.configured_lrs or []):
            return
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        for index, (group, new, old) in enumerate(
            zip(self.trainer.optimizers[0].param_groups, self.configured_lrs, saved, strict=True)
        ):
            if new == old:
                continue
            for key in ("lr", "initial_lr"):  # initial_lr: the base of an LRScheduler
                if key in group:
                    group[key] = rescaled(group[key], old, new)
            for scheduler in schedulers:
                if hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs[index] = rescaled(scheduler.base_lrs[index], old, new)
            rank_zero_info(
                f"parameter group {index}: the configured learning rate {new:g} replaces the checkpoint's "
                f"{old:g}; training goes on at {group['lr']:g}"
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Return the optimizer's parameter groups (one group of everything by default). A group may set any
        optimizer option, and ``lr_mult``: a factor on its learning rate (its own ``lr``, else the
        optimizer's)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        """Build the optimizer on :meth:`parameter_groups` (applying each group's ``lr_mult``) and the
        optional scheduler."""
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
        self.configured_lrs = [group["lr"] for group in optimizer.param_groups]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
