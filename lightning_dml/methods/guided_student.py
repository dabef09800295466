"""G-DML stage 2: a student network regressed onto the GEMINI teacher's targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_dml.data.fingerprint import dataset_fingerprint
from lightning_dml.data.transforms import raw_pixel_transform
from lightning_dml.errors import DataError
from lightning_dml.losses import TargetDistanceLoss
from lightning_dml.methods.base import RetrievalModule
from lightning_dml.methods.gdml import TARGETS_FILE, load_targets, save_targets, stream_targets
from lightning_dml.models import EmbeddingHead, GeminiNetwork


def targets_from_checkpoint(checkpoint_path: Path, datamodule: Any, fingerprint: str) -> dict[str, Any]:
    """Rebuild the teacher from its checkpoint and embed the data module's training set through it.

    ``fingerprint`` is the training set's; a teacher trained on another set is refused before any work.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if "gemini" not in checkpoint:
        raise DataError(f"{checkpoint_path} is not a GeminiTeacher checkpoint; give the teacher's run")
    info = checkpoint["gemini"]
    check_fingerprint(info["fingerprint"], fingerprint, checkpoint_path)
    network = GeminiNetwork(**info["network"])
    prefix = "network."
    network.load_state_dict(
        {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    )
    transform = (
        raw_pixel_transform(datamodule.preprocessing)
        if info["raw_pixels"]
        else datamodule.transform(train=False)
    )
    targets = stream_targets(network, datamodule.train_set, transform)
    return {"targets": targets, "labels": datamodule.train_set.labels, "fingerprint": info["fingerprint"]}


def check_fingerprint(teacher: str, student: str, source: Path) -> None:
    """Raise a one-line DataError when the teacher's training set is not the student's."""
    if teacher != student:
        raise DataError(
            f"{source} was computed on training set {teacher} but this student trains on {student}; give the "
            "student the teacher's data settings (dataset, protocol, seed, hold-outs) or retrain the teacher"
        )


class GuidedStudent(RetrievalModule):
    """Backbone + linear head to d, trained to the teacher's targets by mean Euclidean distance.

    Args:
        backbone: feature extractor with an ``out_features`` attribute (the paper: ``CifarResNet``).
        teacher: the teacher's targets file, or its checkpoint: then ``targets.pt`` in the checkpoint's run
            folder is used, and computed from the checkpoint (and saved there) when it is missing.
        embedding_size: d, the teacher's output size.
        **kwargs: optimizer and scheduler options of :class:`RetrievalModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        teacher: str,
        embedding_size: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.backbone = backbone
        self.head = EmbeddingHead(backbone.out_features, embedding_size, normalize=False)
        self.teacher = teacher
        self.loss = TargetDistanceLoss()
        self.targets: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        """Load (or compute) the teacher's targets for the training set and check its fingerprint."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        fingerprint = dataset_fingerprint(datamodule.train_set)
        content = self.load_teacher(Path(self.teacher), datamodule, fingerprint)
        check_fingerprint(content["fingerprint"], fingerprint, Path(self.teacher))
        size = content["targets"].shape[1]
        if size != self.head.embedding_size:
            raise DataError(
                f"the teacher's targets are {size}-d but embedding_size is {self.head.embedding_size}; "
                f"set model.init_args.embedding_size: {size}"
            )
        self.targets = content["targets"]

    def load_teacher(self, path: Path, datamodule: Any, fingerprint: str) -> dict[str, Any]:
        """The targets file, or the checkpoint's run folder's one, or targets computed from the checkpoint."""
        if path.suffix != ".ckpt":
            return load_targets(path)
        if not path.is_file():
            raise DataError(f"teacher checkpoint not found: {path}; give the teacher run's checkpoint path")
        targets_path = path.parent.parent / TARGETS_FILE
        if targets_path.is_file():
            return load_targets(targets_path)
        rank_zero_info(f"{targets_path} missing: computing the teacher's targets from {path}")
        content = targets_from_checkpoint(path, datamodule, fingerprint)
        if self.trainer.is_global_zero:
            save_targets(targets_path, content["targets"], content["labels"], content["fingerprint"])
        return content

    def on_fit_start(self) -> None:
        """Move the targets to the model's device once, so that no step copies them (or the indices)."""
        if self.targets is not None:
            self.targets = self.targets.to(self.device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``head(backbone(images))`` (raw, not normalised: the teacher's Euclidean space)."""
        return self.head(self.backbone(images))

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean Euclidean distance between the batch's embeddings and their targets (by dataset index)."""
        return self.loss(self.embed(batch["image"]), self.targets[batch["index"]])
