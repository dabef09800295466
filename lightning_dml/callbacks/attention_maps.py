"""``AttentionMaps``: what each DeML stream attends to and where it crops, on fixed validation images."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import draw_bounding_boxes, make_grid

from lightning_dml.errors import ConfigError


def _to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) min-max scaled per image to uint8 RGB (grey images repeated)."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    scaled = (images - low) / (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    rgb = scaled.expand(-1, 3, -1, -1) if images.shape[1] == 1 else scaled[:, :3]
    return (rgb * 255).round().to(torch.uint8)


def _heatmap(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Attention maps (B, h, w) min-max scaled and resized to ``size``, as uint8 RGB (red high, blue low)."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    scaled = (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    scaled = F.interpolate(scaled.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
    return (torch.cat([scaled, torch.zeros_like(scaled), 1 - scaled], dim=1) * 255).round().to(torch.uint8)


def attention_grid(inputs: torch.Tensor, maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """One uint8 image grid (3, H', W'): a row per image, and per stream its input with the crop box drawn in
    green followed by its attention map.

    ``inputs`` (I, B, C, H, W), ``maps`` (I, B, h, w), ``boxes`` (I, B, 4).
    """
    streams = inputs.shape[0]
    size = (inputs.shape[-2], inputs.shape[-1])
    tiles = []
    for stream in range(streams):
        rgb = _to_rgb_uint8(inputs[stream].float().cpu())
        boxed = [
            draw_bounding_boxes(image, box.view(1, 4).cpu(), colors="lime", width=max(1, size[0] // 64))
            for image, box in zip(rgb, boxes[stream], strict=True)
        ]
        tiles.append(torch.stack(boxed))
        tiles.append(_heatmap(maps[stream].float().cpu(), size))
    per_image = torch.stack(tiles, dim=1).flatten(0, 1)  # image-major: a row per image
    return make_grid(per_image, nrow=2 * streams, padding=2, pad_value=255)


class AttentionMaps(L.Callback):
    """Logs, after each validation epoch, the attention map and crop box of every stream for the first
    ``num_images`` images of the first validation set, as one image grid, to every TensorBoard and W&B logger.

    Needs a module with ``attention(images)`` returning ``inputs``, ``maps`` and ``boxes`` (``DeML``). The
    images are taken once, from the first validation batch, so every epoch shows the same ones.

    Args:
        num_images: images shown (rows of the grid).
        every_n_epochs: log every this many validation epochs.
        tag: name of the image in the loggers.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, tag: str = "attention_maps") -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ConfigError(
                f"AttentionMaps needs num_images and every_n_epochs >= 1, got {num_images}, {every_n_epochs}."
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.tag = tag
        self.images: torch.Tensor | None = None

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the first images of the first validation set, once."""
        if self.images is None and batch_idx == 0 and dataloader_idx == 0:
            self.images = batch["image"][: self.num_images].detach().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compute the grid on rank 0 and hand it to the TensorBoard and W&B loggers."""
        if self.images is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        if not hasattr(pl_module, "attention"):
            raise ConfigError(
                f"AttentionMaps needs a module with attention(images), {type(pl_module).__name__} has none; "
                "use it with lightning_dml.methods.DeML"
            )
        with torch.no_grad():
            output = pl_module.attention(self.images.to(pl_module.device))
        grid = attention_grid(output.inputs, output.maps, output.boxes)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, global_step=trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(
                    key=self.tag, images=[grid.permute(1, 2, 0).numpy()], step=trainer.global_step
                )
