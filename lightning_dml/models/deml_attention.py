"""DeML's object attention: random-walk saliency on a feature map, the box it selects, and the zoomed crop.

All three functions work on whole batches on the tensor's device; only the connected-component labelling
runs on the CPU (``scipy.ndimage.label``, one call for the whole batch).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lightning_dml.errors import DataError


def _grid_positions(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H·W, 2) row/column coordinates of a map's cells, row-major like ``flatten``."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack([rows.flatten(), cols.flatten()], dim=1).float()


def random_walk_attention(
    features: torch.Tensor, sigma: float | None = None, steps: int = 10, stationary: bool = False
) -> torch.Tensor:
    """Object-attention maps (B, H, W) of feature maps (B, C, H, W) by random-walk graph propagation.

    Every position p is a node with feature f_p; the edge weight is
    ``w_pq = ‖f_p − f_q‖₂ · exp(−‖pos_p − pos_q‖² / (2σ²))`` (σ = 0.15 · max(H, W) by default, zero
    diagonal). The transition matrix is ``w`` normalised by columns; the map is the walker's distribution
    after ``steps`` power iterations from the uniform distribution (the release uses 10). With ``stationary``
    the exact equilibrium is returned instead: each node's weighted degree divided by the total. Each map
    sums to 1; a map whose graph has no edges (all features equal) stays uniform.
    """
    if features.ndim != 4:
        raise DataError(
            f"random_walk_attention needs features (B, C, H, W), got shape {tuple(features.shape)}"
        )
    batch, _, height, width = features.shape
    nodes = features.flatten(2).transpose(1, 2).float()  # (B, N, C)
    sigma = 0.15 * max(height, width) if sigma is None else sigma
    positions = _grid_positions(height, width, features.device)
    proximity = torch.exp(-torch.cdist(positions, positions).square() / (2 * sigma**2))
    weights = torch.cdist(nodes, nodes) * proximity  # (B, N, N), symmetric, zero diagonal
    degree = weights.sum(dim=1)  # column sums (B, N)
    uniform = torch.full_like(degree, 1.0 / (height * width))
    if stationary:
        total = degree.sum(dim=1, keepdim=True)
        distribution = torch.where(total > 0, degree / total.clamp_min(1e-30), uniform)
    else:
        transition = weights / degree.clamp_min(1e-30).unsqueeze(1)  # columns sum to 1
        distribution = uniform
        for _ in range(steps):
            distribution = torch.bmm(transition, distribution.unsqueeze(2)).squeeze(2)
        distribution = torch.where(degree.sum(dim=1, keepdim=True) > 0, distribution, uniform)
    return distribution.reshape(batch, height, width)


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    return (
        (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    )


def attention_crop_boxes(maps: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """Integer crop boxes (B, 4) as (x0, y0, x1, y1), end exclusive, chosen by attention maps (B, h, w).

    Each map is min-max scaled, resized bilinearly to ``image_size`` and thresholded at its mean; the
    bounding box (x, y, w, h) of the largest 8-connected region above the mean becomes a square of side
    (w + h) / 2 with the same centre, clipped to the image. A map with no region above its mean (a constant
    map) gives the full image.
    """
    if maps.ndim != 3:
        raise DataError(f"attention_crop_boxes needs maps (B, h, w), got shape {tuple(maps.shape)}")
    height, width = _image_size(image_size)
    maps = maps.detach().float()
    low = maps.amin(dim=(1, 2), keepdim=True)
    scaled = (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    resized = F.interpolate(scaled.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    resized = resized.squeeze(1)
    mask = resized > resized.mean(dim=(1, 2), keepdim=True)
    # One labelling for the whole batch: the structure connects pixels within an image, never across images.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, _ = ndimage.label(mask.cpu().numpy(), structure=structure)
    labels = torch.from_numpy(labels).to(maps.device)
    sizes = torch.bincount(labels.flatten())
    sizes[0] = 0  # background
    size_at_pixel = sizes[labels].flatten(1)  # (B, H·W)
    best_pixel = size_at_pixel.argmax(dim=1)
    best_label = labels.flatten(1).gather(1, best_pixel.unsqueeze(1)).squeeze(1)
    region = (labels == best_label.view(-1, 1, 1)) & (best_label.view(-1, 1, 1) > 0)
    found = region.flatten(1).any(dim=1)
    rows, cols = region.any(dim=2), region.any(dim=1)  # (B, H), (B, W)
    y0, y1 = _first_true(rows), height - _first_true(rows.flip(1))
    x0, x1 = _first_true(cols), width - _first_true(cols.flip(1))
    side = ((x1 - x0) + (y1 - y0)).float() / 2
    centre_x, centre_y = (x0 + x1).float() / 2, (y0 + y1).float() / 2
    boxes = torch.stack(
        [
            (centre_x - side / 2).round().clamp(0, width - 1),
            (centre_y - side / 2).round().clamp(0, height - 1),
            (centre_x + side / 2).round().clamp(1, width),
            (centre_y + side / 2).round().clamp(1, height),
        ],
        dim=1,
    ).long()
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    full = torch.tensor([0, 0, width, height], device=maps.device)
    return torch.where(found.unsqueeze(1), boxes, full)


def _first_true(flags: torch.Tensor) -> torch.Tensor:
    """Index of the first True along dim 1 of (B, L) booleans (0 where there is none)."""
    return flags.int().argmax(dim=1)


def crop_and_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """Crop each image (B, C, H, W) to its box (x0, y0, x1, y1) and resize it bilinearly to ``size``.

    One batched ``grid_sample`` (no loop over images); ``size`` defaults to the input size. The result carries
    no gradient to the boxes (they are integers) and none to the images.
    """
    batch, _, height, width = images.shape
    out_height, out_width = _image_size(size) if size is not None else (height, width)
    boxes = boxes.to(images.device, torch.float32)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    # grid_sample's normalised coordinates: -1 and 1 are the outer edges of the image (align_corners=False).
    theta[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / width
    theta[:, 0, 2] = (boxes[:, 0] + boxes[:, 2]) / width - 1
    theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / height
    theta[:, 1, 2] = (boxes[:, 1] + boxes[:, 3]) / height - 1
    with torch.no_grad():
        grid = F.affine_grid(theta, [batch, images.shape[1], out_height, out_width], align_corners=False)
        return F.grid_sample(images.detach(), grid.to(images.dtype), mode="bilinear", align_corners=False)
