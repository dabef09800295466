"""G-DML (Gonzalez-Zapata et al. 2022): the GEMINI teacher, the student guided by it, and the one hand-over
of the teacher's targets between them.

Stage 1, :class:`GeminiTeacher`, ends its fit by writing ``targets.pt`` into its run folder: every training
image embedded through its own class's stream, ``{"targets": (N, d), "labels": (N,), "fingerprint": str}``,
row ``i`` belonging to the training set's item ``index == i``. Stage 2, :class:`GuidedStudent`, is given
``teacher``: that file, or the teacher's checkpoint (the targets are then computed from it). Either way
:func:`teacher_targets` is the hand-over: the only place that reads the teacher's file and compares the
fingerprint (``data.fingerprint``, naming the training set) with the student's training set's.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from lightning_dml.data.batches import ClassPairTriplets
from lightning_dml.data.datamodule import RetrievalDataModule
from lightning_dml.data.fingerprint import dataset_fingerprint
from lightning_dml.data.transforms import raw_pixel_transform
from lightning_dml.errors import ConfigError, DataError
from lightning_dml.losses import GeminiLoss, TargetDistanceLoss
from lightning_dml.losses.batch_triplets import split_triplets
from lightning_dml.methods.base import RetrievalModule
from lightning_dml.models import EmbeddingHead, GeminiNetwork

TARGETS_FILE = "targets.pt"
#: Logged key of the targets' leave-one-out 1-NN accuracy (the "targets" set of the run summary).
TARGET_ACCURACY = "targets/1nn_accuracy"


def check_teacher_data(datamodule: RetrievalDataModule, num_streams: int, raw_pixels: bool) -> None:
    """Raise a one-line DataError unless the data module feeds the teacher what it trains on: one class per
    stream, class-pair triplet batches (not shuffled), and pixels in the scale the teacher expects."""
    classes = datamodule.num_train_classes
    if classes != num_streams:
        raise DataError(
            f"the GEMINI teacher has {num_streams} streams but the training set has {classes} classes; set "
            f"model.init_args.num_streams: {classes}"
        )
    sampler = datamodule.sampler
    if not isinstance(sampler, ClassPairTriplets) or sampler.shuffle:
        raise DataError(
            "the GEMINI teacher trains on class-pair triplets; set data sampler: "
            "lightning_dml.data.ClassPairTriplets (shuffle: false)"
        )
    if datamodule.preprocessing.raw_pixels != raw_pixels:
        raise DataError(
            f"the teacher expects raw_pixels={raw_pixels} but the data module gives "
            f"raw_pixels={datamodule.preprocessing.raw_pixels}; set the same value on both (data: "
            "transforms.raw_pixels)"
        )


@torch.no_grad()
def training_set_targets(
    network: GeminiNetwork, datamodule: RetrievalDataModule, raw_pixels: bool, batch_size: int = 512
) -> torch.Tensor:
    """The targets (N, d): every image of the data module's training set through the stream of its label,
    fed as the teacher was (0–255 pixels with ``raw_pixels``, else the data module's evaluation transform);
    row ``i`` is the training set's item ``i``."""
    transform = raw_pixel_transform(datamodule.preprocessing) if raw_pixels else datamodule.transform(False)
    train_set = datamodule.train_set
    view = train_set.select(torch.arange(len(train_set)), transform, contiguous_labels=True)
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    targets = torch.empty(len(view), network.embedding_size)
    for batch in DataLoader(view, batch_size=batch_size):
        outputs, _ = network(batch["image"].to(device), batch["label"].to(device))
        targets[batch["index"]] = outputs.float().cpu()
    network.train(was_training)
    return targets


def nearest_neighbour_accuracy(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out 1-NN accuracy of labelled low-dimensional embeddings by float64 Euclidean distances;
    items tied as nearest count as the share of them with the query's label (the expected accuracy over
    random orders).

    By scikit-learn's k-d tree rather than ``metrics.rank``, which keeps each query's R best items for MAP@R:
    with R = 6,000 (a Fashion-MNIST class) that costs minutes where only the nearest item is needed.
    """
    from sklearn.neighbors import KDTree  # deferred: scikit-learn is slow to import

    points = embeddings.detach().double().cpu()
    labels = labels.cpu()
    tree = KDTree(points.numpy())
    nearest_distance = torch.from_numpy(tree.query(points.numpy(), k=2)[0][:, 1])  # self, then the nearest
    # every item within a hair of the nearest distance, then exact float64 distances pick the tied nearest
    within = tree.query_radius(points.numpy(), r=nearest_distance.numpy() * (1 + 1e-9) + 1e-300)
    rows = torch.cat([torch.full((len(found),), i) for i, found in enumerate(within)])
    columns = torch.from_numpy(np.concatenate(within)).long()
    others = rows != columns
    rows, columns = rows[others], columns[others]
    distances = (points[rows] - points[columns]).square().sum(1)
    least = torch.full((len(points),), torch.inf, dtype=torch.float64).scatter_reduce(
        0, rows, distances, "amin"
    )
    tied = distances == least[rows]
    hits = torch.bincount(rows[tied], (labels[rows] == labels[columns])[tied].double(), len(points))
    return float((hits / torch.bincount(rows[tied], minlength=len(points))).mean())


def save_targets(path: Path, targets: torch.Tensor, labels: torch.Tensor, fingerprint: str) -> None:
    """Write a targets file atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save({"targets": targets, "labels": labels, "fingerprint": fingerprint}, partial)
    os.replace(partial, path)


def teacher_targets(path: Path, datamodule: RetrievalDataModule) -> torch.Tensor:
    """The teacher's targets (N, d) for the data module's training set: read from a targets file, or computed
    from a :class:`GeminiTeacher` checkpoint (the file's content decides, read with ``weights_only``).

    The teacher's fingerprint is compared with the training set's here, before any work; a missing file, a
    file of another kind or another training set raises a one-line DataError naming the fix.
    """
    advice = "give the teacher run's targets.pt (written when its fit ends) or its checkpoint"
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"teacher file not found: {path}; {advice}") from None
    except (RuntimeError, pickle.UnpicklingError, IsADirectoryError):
        content = {}
    content = content if isinstance(content, dict) else {}
    info = content.get("gemini")  # a teacher checkpoint's
    if info is None and not {"targets", "labels", "fingerprint"} <= set(content):
        raise DataError(f"{path} is neither a G-DML targets file nor a GeminiTeacher checkpoint; {advice}")
    fingerprint = content["fingerprint"] if info is None else info["fingerprint"]
    student = dataset_fingerprint(datamodule.train_set)
    if fingerprint != student:
        raise DataError(
            f"the teacher's {path} belongs to training set {fingerprint} but this student trains on "
            f"{student}; give the student the teacher's data settings (dataset, protocol, seed, hold-outs) "
            "or retrain the teacher"
        )
    if info is None:
        return content["targets"]
    rank_zero_info(f"computing the teacher's targets from {path}")
    network = GeminiNetwork(**info["network"])
    prefix = "network."
    network.load_state_dict(
        {k.removeprefix(prefix): v for k, v in content["state_dict"].items() if k.startswith(prefix)}
    )
    return training_set_targets(network, datamodule, info["raw_pixels"])


class GeminiTeacher(RetrievalModule):
    """GEMINI: one stream per training class and a shared head, trained on class-pair triplets.

    Needs the data module's ``sampler: ClassPairTriplets`` (not shuffled; each batch: b anchors, b positives
    of class i, b negatives of class j, so only streams i and j run) and the same ``transforms.raw_pixels``
    (the paper's 0–255 scale) there (see :func:`check_teacher_data`). At the end of fit it writes the targets
    file into the logger's run folder (``trainer.log_dir``) and logs ``targets/1nn_accuracy``, the
    leave-one-out 1-NN accuracy of the targets (≈ 1 when the teacher works).

    Evaluation (and prediction) is label-conditioned: GEMINI embeds an image only through its class's stream,
    so every evaluated image goes through the stream of its own label (:meth:`embed_batch`). Its metrics,
    logged under the usual names (``test/map@r``, ``val/recall@1``), are an oracle that shows the target space
    the student is asked to learn (the gallery of ``test_gallery: training_images`` is exactly the targets),
    not a retrieval result comparable with the student's or any method's, which never see the query's label.
    An evaluation set holding classes the teacher has no stream for (zero-shot unseen classes) is refused at
    its first batch with a one-line DataError: a stream of another class would give an arbitrary number.
    :meth:`embed` (plain images, as export and search call it) is refused too.

    Args:
        num_streams: number of training classes (one stream each).
        in_channels, image_size, embedding_size, padding: see :class:`GeminiNetwork`. The CLI sets
            ``num_streams``, ``in_channels`` and ``image_size`` from the data module
            (:mod:`lightning_dml.cli_facts`).
        margin: α of the triplet term.
        feature_weight: λ, the weight of the stream-feature term.
        raw_pixels: the network is fed float pixels in 0–255 (checked against the data module).
        **kwargs: optimizer, scheduler and memory-format options of :class:`RetrievalModule`.
    """

    def __init__(
        self,
        num_streams: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        embedding_size: int = 2,
        padding: int = 0,
        margin: float = 3.0,
        feature_weight: float = 0.005,
        raw_pixels: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.network_args = {
            "num_streams": num_streams,
            "in_channels": in_channels,
            "image_size": image_size,
            "embedding_size": embedding_size,
            "padding": padding,
        }
        self.network = GeminiNetwork(**self.network_args)
        self.loss = GeminiLoss(margin, feature_weight)
        self.raw_pixels = raw_pixels
        self.fingerprint: str | None = None
        # class id of each stream (the training labels number the sorted class ids); saved with "gemini"
        self.register_buffer("stream_classes", torch.arange(num_streams), persistent=False)

    def setup(self, stage: str) -> None:
        """Check the data module (:func:`check_teacher_data`); note its training classes and fingerprint."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        check_teacher_data(datamodule, self.network_args["num_streams"], self.raw_pixels)
        self.stream_classes = torch.unique(datamodule.train_set.class_ids).to(self.stream_classes.device)
        self.fingerprint = dataset_fingerprint(datamodule.train_set)

    def streams_of(self, class_ids: torch.Tensor) -> torch.Tensor:
        """The stream of each class id; a DataError names the class ids that have none."""
        streams = torch.searchsorted(self.stream_classes, class_ids).clamp(max=len(self.stream_classes) - 1)
        known = self.stream_classes[streams] == class_ids
        if not bool(known.all()):
            raise DataError(
                f"the GEMINI teacher embeds an image only through its own class's stream and has none for "
                f"class ids {class_ids[~known].unique().tolist()} of an evaluation set (classes it did not "
                "train on); evaluate it on its training classes only (data validation: [seen] or [test] "
                "with a closed-set protocol; test_after_fit: false under zero_shot) and evaluate the guided "
                "student on unseen classes"
            )
        return streams

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Not defined: GEMINI embeds an image only through its class's stream (see :meth:`embed_batch`)."""
        raise ConfigError(
            "the GEMINI teacher embeds an image only through its class's stream, so it needs the labels: it "
            "is evaluated label-conditioned but cannot embed plain images; export or search with the guided "
            "student"
        )

    def embed_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Label-conditioned embeddings (B, d): each image through the stream of its label (a class id)."""
        return self.network(batch["image"], self.streams_of(batch["label"]))[0]

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """GEMINI loss of the batch's b triplets, each image through its own class's stream."""
        labels = batch["label"]
        embeddings, features = self.network(batch["image"], labels)
        triplets = tuple(rows.to(labels.device) for rows in split_triplets(len(labels)))
        return self.loss(embeddings, labels, triplets, features)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what a student needs to rebuild the network and check the data, and the streams' classes
        (no pickled objects)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["gemini"] = {
            "network": dict(self.network_args),
            "raw_pixels": self.raw_pixels,
            "fingerprint": self.fingerprint,
            "stream_classes": self.stream_classes.tolist(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the streams' classes (checkpoints written before they were saved: class ids 0..n-1)."""
        super().on_load_checkpoint(checkpoint)
        classes = checkpoint["gemini"].get("stream_classes", range(len(self.stream_classes)))
        self.stream_classes = torch.as_tensor(list(classes), device=self.stream_classes.device)

    def on_train_end(self) -> None:
        """Compute, save and check the targets (rank 0), then let every rank go on; before ``on_fit_end``,
        so the run summary shows their accuracy."""
        trainer = self.trainer
        if trainer.is_global_zero and trainer.datamodule is not None:
            datamodule = trainer.datamodule
            targets = training_set_targets(self.network, datamodule, self.raw_pixels)
            labels = datamodule.train_set.labels
            path = Path(trainer.log_dir or ".") / TARGETS_FILE
            save_targets(path, targets, labels, self.fingerprint)
            accuracy = nearest_neighbour_accuracy(targets, labels)
            trainer.callback_metrics[TARGET_ACCURACY] = torch.tensor(accuracy)
            for logger in trainer.loggers:
                logger.log_metrics({TARGET_ACCURACY: accuracy}, step=trainer.global_step)
            rank_zero_info(f"G-DML targets written to {path} (leave-one-out 1-NN accuracy {accuracy:.4f})")
        trainer.strategy.barrier()


class GuidedStudent(RetrievalModule):
    """Backbone + linear head to d, trained to the teacher's targets by mean Euclidean distance.

    Args:
        backbone: feature extractor with an ``out_features`` attribute (the paper: ``CifarResNet``).
        teacher: the teacher run's targets file (``targets.pt``), or its checkpoint: the targets are then
            computed from it (see :func:`teacher_targets`).
        embedding_size: d, the teacher's output size.
        **kwargs: optimizer, scheduler and memory-format options of :class:`RetrievalModule`.
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
        """Take the teacher's targets for the training set (:func:`teacher_targets`) and check their size."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        targets = teacher_targets(Path(self.teacher), datamodule)
        size = targets.shape[1]
        if size != self.head.embedding_size:
            raise DataError(
                f"the teacher's targets are {size}-d but embedding_size is {self.head.embedding_size}; "
                f"set model.init_args.embedding_size: {size}"
            )
        self.targets = targets

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
