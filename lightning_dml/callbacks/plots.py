"""Pure picture functions on tensors: 2-D embedding plots, retrieval grids, per-query average precision.

Usable from notebooks as they are; ``Pictures`` calls them during training. Figures are built
with ``matplotlib.figure.Figure`` (no pyplot), so nothing global is opened or left open.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

from lightning_dml.errors import DataError

Projection = Literal["auto", "pca", "umap"]

#: Border colours (RGB in [0, 1]) of the retrieval grid.
QUERY_COLOUR = (0.15, 0.35, 0.95)
CORRECT_COLOUR = (0.0, 0.75, 0.0)
WRONG_COLOUR = (0.9, 0.0, 0.0)


def umap_available() -> bool:
    """Whether ``umap-learn`` is installed."""
    return importlib.util.find_spec("umap") is not None


def project_2d(embeddings: Tensor, projection: Projection = "auto", seed: int = 0) -> tuple[Tensor, str]:
    """Return ``(N, 2)`` float coordinates of ``embeddings`` and the name of the method used.

    The embeddings themselves when D = 2; otherwise PCA (scikit-learn), or UMAP for ``"umap"`` and for
    ``"auto"`` when ``umap-learn`` is installed.
    """
    if embeddings.ndim != 2 or embeddings.shape[1] < 2 or len(embeddings) < 2:
        raise DataError(
            f"a 2-D view needs (N, D) embeddings with N >= 2 and D >= 2, got shape {tuple(embeddings.shape)}"
        )
    points = embeddings.detach().float().cpu()
    if points.shape[1] == 2:
        return points, "embedding"
    if projection == "umap" and not umap_available():
        raise DataError('projection="umap" needs umap-learn: `pip install umap-learn`, or use "pca"')
    if projection == "umap" or (projection == "auto" and umap_available()):
        import umap

        return torch.as_tensor(umap.UMAP(random_state=seed).fit_transform(points.numpy())).float(), "UMAP"
    from sklearn.decomposition import PCA  # deferred for start-up time

    coordinates = PCA(n_components=2, random_state=seed).fit_transform(points.numpy())
    return torch.as_tensor(coordinates).float(), "PCA"


def class_colours(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` distinct RGBA colours: tab10 / tab20 while they suffice, else evenly spaced turbo."""
    if count <= 20:
        palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
        return [palette(i) for i in range(count)]
    palette = matplotlib.colormaps["turbo"]
    return [palette(i / (count - 1)) for i in range(count)]


def plot_embeddings_2d(
    embeddings: Tensor, labels: Tensor, title: str = "", projection: Projection = "auto", seed: int = 0
) -> Figure:
    """Scatter plot of the 2-D view of ``embeddings`` (``project_2d``), one colour and legend entry per class.

    Each class is one scatter collection labelled with its class id, in sorted class order.
    """
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (len(embeddings),):
        raise DataError(f"labels must be 1-D with one entry per embedding, got shape {tuple(labels.shape)}")
    points, method = project_2d(embeddings, projection, seed)
    figure = Figure(figsize=(6, 6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    classes = labels.unique()
    for colour, label in zip(class_colours(len(classes)), classes.tolist(), strict=True):
        chosen = points[labels == label]
        axes.scatter(chosen[:, 0], chosen[:, 1], s=10, color=colour, label=str(label), linewidths=0)
    if len(classes) <= 20:
        axes.legend(title="class", fontsize="small", markerscale=2, loc="best")
    axes.set_xlabel(f"{method} 1")
    axes.set_ylabel(f"{method} 2")
    axes.set_title(title)
    return figure


def worst_queries(average_precision: Tensor, count: int) -> Tensor:
    """Positions of the ``count`` queries with the lowest AP, lowest first (ties: lower position first).

    NaN entries (lone queries) are never chosen.
    """
    valid = torch.nonzero(~average_precision.isnan()).flatten()
    order = torch.argsort(average_precision[valid], stable=True)
    return valid[order[:count]]


def resize_square(images: Tensor, size: int) -> Tensor:
    """Resize ``(N, C, H, W)`` images to ``size × size``: nearest when enlarging (keeps pixels crisp)."""
    if images.shape[-2:] == (size, size):
        return images
    if size >= max(images.shape[-2:]):
        return F.interpolate(images, size=(size, size), mode="nearest")
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def retrieval_grid(
    query_images: Tensor,
    neighbour_images: Tensor,
    correct: Tensor,
    present: Tensor | None = None,
    cell_size: int | None = None,
    border: int | None = None,
) -> Tensor:
    """One row per query: the query (blue border), then its neighbours best first (green when correct,
    red when not). Returns a ``(3, H, W)`` float image in [0, 1].

    ``query_images`` ``(Q, C, H, W)`` and ``neighbour_images`` ``(Q, k, C, H, W)`` hold values in [0, 1]
    (C = 1 or 3); ``correct`` ``(Q, k)`` bool; ``present`` ``(Q, k)`` bool marks real neighbours (absent
    cells are left blank). ``cell_size`` resizes every image to that square; ``border`` defaults to
    1/16 of the cell (at least 2 pixels). Cells are separated by 2 white pixels.
    """
    if query_images.ndim != 4 or neighbour_images.shape[:2] != correct.shape:
        raise DataError(
            f"expected query_images (Q, C, H, W), neighbour_images (Q, k, C, H, W) and correct (Q, k), got "
            f"{tuple(query_images.shape)}, {tuple(neighbour_images.shape)}, {tuple(correct.shape)}"
        )
    if neighbour_images.shape[0] != len(query_images) or neighbour_images.shape[2:] != query_images.shape[1:]:
        raise DataError(
            f"neighbour_images {tuple(neighbour_images.shape)} do not match query_images "
            f"{tuple(query_images.shape)}; give every image the same (C, H, W)"
        )
    rows, k = correct.shape
    present = torch.ones_like(correct, dtype=torch.bool) if present is None else present.bool()
    images = torch.cat([query_images[:, None], neighbour_images], 1).flatten(0, 1).float().cpu()
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    if cell_size is not None:
        images = resize_square(images, cell_size)
    height, width = images.shape[-2:]
    border = border or max(2, min(height, width) // 16)
    colours = torch.tensor([WRONG_COLOUR, CORRECT_COLOUR, QUERY_COLOUR])
    kinds = torch.cat([torch.full((rows, 1), 2), correct.long().cpu()], 1).flatten()
    cells = colours[kinds][:, :, None, None].expand(-1, -1, height + 2 * border, width + 2 * border).clone()
    cells[:, :, border : border + height, border : border + width] = images.clamp(0, 1)
    shown = torch.cat([torch.ones(rows, 1, dtype=torch.bool), present.cpu()], 1).flatten()
    cells[~shown] = 1.0
    return make_grid(cells, nrow=k + 1, padding=2, pad_value=1.0)


def figure_to_image(figure: Figure) -> Tensor:
    """Render a matplotlib figure to a ``(3, H, W)`` uint8 image."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy()).permute(2, 0, 1)
