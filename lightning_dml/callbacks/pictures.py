"""``Pictures``: retrieval grids, 2-D embedding plots and the embedding projector of the evaluation sets,
drawn by ``RetrievalEvaluation`` from its own outputs and rankings, logged to TensorBoard and W&B."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset

from lightning_dml.callbacks.plots import (
    Projection,
    figure_to_image,
    plot_embeddings_2d,
    resize_square,
    retrieval_grid,
    worst_queries,
)
from lightning_dml.metrics import Ranking

Stage = Literal["validate", "test"]


def load_images(
    dataset: Dataset,
    positions: Tensor,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    size: int | None = None,
) -> Tensor:
    """Images ``dataset[i]["image"]`` for ``i`` in ``positions`` as ``(N, C, size, size)`` floats in [0, 1].

    The evaluation transform's normalisation is undone with ``mean`` and ``std`` (per channel or one value);
    uint8 images (a loader's, when the data module scales after transfer) are divided by 255 instead.
    ``size`` resizes each image to that square (``None``: keep the size, which must then be common).
    """
    images = []
    for i in positions.tolist():
        image = torch.as_tensor(dataset[i]["image"])
        if image.dtype == torch.uint8:
            image = image / 255
        else:
            image = image.float() * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        images.append(image[None] if size is None else resize_square(image[None], size))
    return torch.cat(images).clamp(0, 1)


@dataclass(frozen=True)
class Pictures:
    """What ``RetrievalEvaluation`` draws and logs of each evaluation set, every ``every_n_epochs``
    validations and at test (rank 0 only), from its own outputs and ``Ranking`` of the set.

    For each evaluation set: ``{set}/retrieval`` (``num_queries`` fixed random queries with their ``top_k``
    neighbours, green border = same class, red = not), ``{set}/worst_queries`` (the ``num_worst`` queries
    with the lowest AP@R, lowest first, same layout), ``{set}/embeddings_2d`` (the 2-D view of up to
    ``max_plot_points`` embeddings coloured by class: the embeddings themselves when D = 2, else PCA, or
    UMAP per ``projection``), and in TensorBoard the embedding projector for ``projector_samples`` items
    with their labels and thumbnails. Logged to every ``TensorBoardLogger`` and ``WandbLogger`` of the
    trainer; other loggers get nothing. Images come from the data module's evaluation sets, de-normalised
    with its ``mean`` and ``std``.

    Args:
        every_n_epochs: log after the validation of every N-th epoch and at test; 0 turns the pictures off.
        num_queries: queries in the retrieval grid (the same seeded sample every time; 0: no grid).
        top_k: neighbours shown per query.
        num_worst: queries in the worst-queries grid (0: no grid).
        projection: 2-D method when D > 2: ``auto`` (UMAP if installed, else PCA), ``pca`` or ``umap``.
        projector_samples: items in the TensorBoard projector (0: no projector).
        max_plot_points: most points in the 2-D plot (a seeded sample beyond that).
        cell_size: side in pixels of each image in the grids.
        thumbnail_size: side in pixels of the projector thumbnails.
        seed: seed of the samples.
    """

    every_n_epochs: int = 1
    num_queries: int = 8
    top_k: int = 5
    num_worst: int = 8
    projection: Projection = "auto"
    projector_samples: int = 500
    max_plot_points: int = 5000
    cell_size: int = 64
    thumbnail_size: int = 32
    seed: int = 0

    def due(self, trainer: L.Trainer, stage: Stage) -> bool:
        """Whether pictures are logged after this evaluation: at test, and after the validation of every
        ``every_n_epochs``-th epoch (not the sanity check); never when ``every_n_epochs`` is 0."""
        if self.every_n_epochs <= 0:
            return False
        if stage == "test":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking

    def draw(
        self,
        outputs: dict[str, Tensor],
        ranking: Ranking,
        dataset: Dataset,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        title: str = "",
    ) -> dict[str, Tensor | Figure]:
        """Return the pictures of one evaluation set: ``retrieval`` and ``worst_queries`` (``(3, H, W)``
        images in [0, 1], each left out when its number of queries is 0) and ``embeddings_2d`` (a figure).

        ``outputs`` holds ``embeddings``, ``labels`` and ``indices`` (positions in ``dataset``), and
        ``is_query``/``is_gallery`` for query-vs-gallery sets; ``ranking`` is the evaluation's ``Ranking``
        of the set, with at least ``top_k`` items per query.
        """
        embeddings = outputs["embeddings"].float()
        labels, indices = outputs["labels"].cpu(), outputs["indices"].cpu()
        if "is_query" in outputs:
            query_rows = torch.nonzero(outputs["is_query"].cpu().bool()).flatten()
            gallery_rows = torch.nonzero(outputs["is_gallery"].cpu().bool()).flatten()
        else:
            query_rows = gallery_rows = torch.arange(len(labels))

        generator = torch.Generator().manual_seed(self.seed)
        sample = torch.randperm(len(query_rows), generator=generator)[: self.num_queries]
        worst = worst_queries(ranking.average_precision.cpu(), self.num_worst)
        plotted = torch.randperm(len(labels), generator=generator)[: self.max_plot_points]
        pictures = {}
        picked = torch.cat([sample, worst])
        if len(picked):
            # The ranking's own top lists; one image load (each image once) for both grids.
            found = ranking.top_indices[picked.to(ranking.top_indices.device), : self.top_k].cpu()
            queries = query_rows[picked]
            present = found >= 0
            neighbours = gallery_rows[found.clamp(min=0)]
            correct = (labels[neighbours] == labels[queries, None]) & present
            positions, inverse = torch.unique(
                indices[torch.cat([queries, neighbours.flatten()])], return_inverse=True
            )
            images = load_images(dataset, positions, mean, std, self.cell_size)[inverse]
            query_images = images[: len(queries)]
            neighbour_images = images[len(queries) :].unflatten(0, neighbours.shape)
            for key, rows in (
                ("retrieval", slice(0, len(sample))),
                ("worst_queries", slice(len(sample), None)),
            ):
                if len(query_images[rows]):
                    pictures[key] = retrieval_grid(
                        query_images[rows], neighbour_images[rows], correct[rows], present[rows]
                    )
        pictures["embeddings_2d"] = plot_embeddings_2d(
            embeddings[plotted.to(embeddings.device)], labels[plotted], title, self.projection, self.seed
        )
        return pictures

    def log(
        self,
        trainer: L.Trainer,
        outputs: dict[str, dict[str, Tensor]],
        rankings: dict[str, Ranking],
        stage: Stage,
    ) -> None:
        """Log the pictures of every evaluation set of ``stage``, from its ``outputs`` and ``rankings`` (those
        of ``RetrievalEvaluation``), to the trainer's TensorBoard and W&B loggers, on rank 0."""
        loggers = picture_loggers(trainer)
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or not loggers or datamodule is None:
            return
        sets = datamodule.evaluation_sets(stage)
        mean, std = display_normalisation(datamodule)
        step = trainer.global_step
        for name, set_outputs in outputs.items():
            title = f"{name}, epoch {trainer.current_epoch}"
            pictures = self.draw(set_outputs, rankings[name], sets[name], mean, std, title)
            images = {
                f"{name}/{key}": figure_to_image(value) if isinstance(value, Figure) else value
                for key, value in pictures.items()
            }
            projector = None  # built once, for the first TensorBoard logger
            for logger in loggers:
                if isinstance(logger, TensorBoardLogger):
                    for tag, image in images.items():
                        logger.experiment.add_image(tag, image, step)
                    if self.projector_samples > 0:
                        projector = projector or self._projector(set_outputs, sets[name], mean, std)
                        logger.experiment.add_embedding(**projector, global_step=step, tag=name)
                else:
                    for tag, image in images.items():
                        logger.log_image(tag, [to_hwc_uint8(image)], step=step)

    def _projector(
        self, outputs: dict[str, Tensor], dataset: Dataset, mean: Sequence[float], std: Sequence[float]
    ) -> dict[str, Any]:
        """The embedding projector's ``projector_samples`` items: embeddings, labels and thumbnails."""
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(len(outputs["labels"]), generator=generator)[: self.projector_samples]
        thumbnails = load_images(dataset, outputs["indices"].cpu()[rows], mean, std, self.thumbnail_size)
        return {
            "mat": outputs["embeddings"].cpu()[rows].float(),
            "metadata": outputs["labels"].cpu()[rows].tolist(),
            "label_img": thumbnails.expand(-1, 3, -1, -1),
        }


def picture_loggers(trainer: L.Trainer) -> list[Any]:
    """The trainer's loggers that show pictures: its ``TensorBoardLogger`` and ``WandbLogger`` instances."""
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger | WandbLogger)]


def display_normalisation(datamodule: L.LightningDataModule) -> tuple[Sequence[float], Sequence[float]]:
    """The ``mean`` and ``std`` that map the data module's evaluation images back to [0, 1]."""
    preprocessing = getattr(datamodule, "preprocessing", None)
    return ((0.0,), (1.0,)) if preprocessing is None else preprocessing.display_normalisation()


def to_hwc_uint8(image: Tensor) -> Any:
    """A ``(3, H, W)`` image (float in [0, 1] or uint8) as an ``(H, W, 3)`` uint8 numpy array."""
    if image.is_floating_point():
        image = (image * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).numpy()
