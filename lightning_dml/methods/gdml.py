"""G-DML stage 1: the GEMINI teacher, and the targets file it leaves for the guided student.

The targets are every training image embedded through its own class's stream, saved with the run as
``targets.pt``: ``{"targets": (N, d), "labels": (N,), "fingerprint": str}``, row ``i`` belonging to the
training set's item ``index == i``. The fingerprint (``data.fingerprint``) names the training set, so a
student trained on other data refuses the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lightning_dml.data.base import RetrievalDataset
from lightning_dml.data.batches import ClassPairTriplets
from lightning_dml.data.fingerprint import dataset_fingerprint
from lightning_dml.data.transforms import raw_pixel_transform
from lightning_dml.errors import ConfigError, DataError
from lightning_dml.losses import GeminiLoss
from lightning_dml.losses.batch_triplets import split_triplets
from lightning_dml.methods.base import RetrievalModule
from lightning_dml.models import GeminiNetwork

TARGETS_FILE = "targets.pt"
#: Logged key of the targets' leave-one-out 1-NN accuracy (the "targets" set of the run summary).
TARGET_ACCURACY = "targets/1nn_accuracy"


@torch.no_grad()
def stream_targets(
    network: GeminiNetwork, train_set: RetrievalDataset, transform: Callable, batch_size: int = 512
) -> torch.Tensor:
    """Embed every image of ``train_set`` (with ``transform``) through the stream of its label: (N, d)."""
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


def load_targets(path: Path) -> dict[str, Any]:
    """Read a targets file (``weights_only``); a missing or malformed file raises a DataError."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"teacher targets file not found: {path}; run the teacher stage first") from None
    if not isinstance(content, dict) or {"targets", "labels", "fingerprint"} - set(content):
        raise DataError(f"{path} is not a G-DML targets file (needs targets, labels and fingerprint)")
    return content


class GeminiTeacher(RetrievalModule):
    """GEMINI: one stream per training class and a shared head, trained on class-pair triplets.

    Needs the data module's ``sampler: ClassPairTriplets`` (not shuffled; each batch: b anchors, b positives
    of class i, b negatives of class j, so only streams i and j run) and, with ``raw_pixels`` (the paper's
    scale), ``transforms: {raw_pixels: true}`` there too. At the end of fit it writes the targets file into
    the logger's run folder (``trainer.log_dir``) and logs ``targets/1nn_accuracy``, the leave-one-out 1-NN
    accuracy of the targets (≈ 1 when the teacher works). There is no embedding for an image of unknown
    class, so the teacher is not evaluated: configure no validation sets and ``test_after_fit: false``.

    Args:
        num_streams: number of training classes (one stream each).
        in_channels, image_size, embedding_size, padding: see :class:`GeminiNetwork`.
        margin: α of the triplet term.
        feature_weight: λ, the weight of the stream-feature term.
        raw_pixels: the network is fed float pixels in 0–255 (checked against the data module).
        **kwargs: optimizer and scheduler options of :class:`RetrievalModule`.
    """

    def __init__(
        self,
        num_streams: int,
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

    def setup(self, stage: str) -> None:
        """Check that the data module feeds what the network expects; fingerprint its training set."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        classes = datamodule.num_train_classes
        if classes != self.network_args["num_streams"]:
            raise DataError(
                f"the GEMINI teacher has {self.network_args['num_streams']} streams but the training set "
                f"has {classes} classes; set model.init_args.num_streams: {classes}"
            )
        sampler = getattr(datamodule, "sampler", None)
        if not isinstance(sampler, ClassPairTriplets) or sampler.shuffle:
            raise DataError(
                "the GEMINI teacher trains on class-pair triplets; set data sampler: "
                "lightning_dml.data.ClassPairTriplets (shuffle: false)"
            )
        if datamodule.preprocessing.raw_pixels != self.raw_pixels:
            raise DataError(
                f"the teacher expects raw_pixels={self.raw_pixels} but the data module gives "
                f"raw_pixels={datamodule.preprocessing.raw_pixels}; set the same value on both (data: "
                "transforms.raw_pixels)"
            )
        self.fingerprint = dataset_fingerprint(datamodule.train_set)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Not defined: GEMINI embeds an image only through its class's stream (see ``network``)."""
        raise ConfigError(
            "the GEMINI teacher embeds images only through their class's stream and is not evaluated; "
            "set data validation: [] and test_after_fit: false, and evaluate the guided student"
        )

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """GEMINI loss of the batch's b triplets, each image through its own class's stream."""
        labels = batch["label"]
        embeddings, features = self.network(batch["image"], labels)
        triplets = tuple(rows.to(labels.device) for rows in split_triplets(len(labels)))
        return self.loss(embeddings, labels, triplets, features)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what a student needs to rebuild the network and check the data (no pickled objects)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["gemini"] = {
            "network": dict(self.network_args),
            "raw_pixels": self.raw_pixels,
            "fingerprint": self.fingerprint,
        }

    def on_train_end(self) -> None:
        """Compute, save and check the targets (rank 0), then let every rank go on; before ``on_fit_end``,
        so the run summary shows their accuracy."""
        trainer = self.trainer
        if trainer.is_global_zero and trainer.datamodule is not None:
            datamodule = trainer.datamodule
            transform = (
                raw_pixel_transform(datamodule.preprocessing)
                if self.raw_pixels
                else datamodule.transform(train=False)
            )
            targets = stream_targets(self.network, datamodule.train_set, transform)
            labels = datamodule.train_set.labels
            path = Path(trainer.log_dir or ".") / TARGETS_FILE
            save_targets(path, targets, labels, self.fingerprint)
            accuracy = nearest_neighbour_accuracy(targets, labels)
            trainer.callback_metrics[TARGET_ACCURACY] = torch.tensor(accuracy)
            for logger in trainer.loggers:
                logger.log_metrics({TARGET_ACCURACY: accuracy}, step=trainer.global_step)
            rank_zero_info(f"G-DML targets written to {path} (leave-one-out 1-NN accuracy {accuracy:.4f})")
        trainer.strategy.barrier()
