"""AttentionMaps: the image grid and its hand-off to TensorBoard and W&B."""

from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_dml.callbacks import AttentionMaps
from lightning_dml.callbacks.attention_maps import attention_grid
from lightning_dml.errors import ConfigError
from lightning_dml.methods import DeML
from lightning_dml.models import SplitSmallCNN


def test_grid_has_a_row_per_image_and_two_tiles_per_stream_with_the_box_drawn() -> None:
    inputs = torch.zeros(2, 3, 1, 16, 16)  # I = 2 streams, B = 3 images
    maps = torch.rand(2, 3, 4, 4)
    boxes = torch.tensor([[4, 4, 12, 12]]).expand(2, 3, 4)
    grid = attention_grid(inputs, maps, boxes)
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 3 * 18 + 2, 4 * 18 + 2)  # 2-px padding around 16-px tiles
    first_tile = grid[:, 2:18, 2:18]
    green = (first_tile[1] == 255) & (first_tile[0] == 0)
    assert green[4, 4:12].all() and not green[8, 8]  # the box outline, not its inside
    first_map = grid[:, 2:18, 20:36]
    assert first_map[0].float().std() > 0  # the heat map varies


def fake_trainer(*loggers) -> SimpleNamespace:
    return SimpleNamespace(
        loggers=list(loggers), sanity_checking=False, is_global_zero=True, current_epoch=0, global_step=7
    )


def test_logs_the_same_images_to_tensorboard_and_wandb() -> None:
    torch.manual_seed(0)
    module = DeML(SplitSmallCNN(widths=(8, 16, 16)), streams=3, learners=2, embedding_size=4).eval()
    callback = AttentionMaps(num_images=2)
    first = {"image": torch.randn(5, 1, 28, 28)}
    callback.on_validation_batch_start(MagicMock(), module, first, batch_idx=0)
    callback.on_validation_batch_start(MagicMock(), module, {"image": torch.randn(5, 1, 28, 28)}, batch_idx=0)
    torch.testing.assert_close(callback.images, first["image"][:2])  # fixed: taken once
    tensorboard, wandb = MagicMock(spec=TensorBoardLogger), MagicMock(spec=WandbLogger)
    csv = MagicMock(spec=CSVLogger)
    callback.on_validation_epoch_end(fake_trainer(tensorboard, wandb, csv), module)
    tag, grid = tensorboard.experiment.add_image.call_args.args
    assert tag == "attention_maps" and grid.shape == (3, 2 * 30 + 2, 6 * 30 + 2)  # 3 streams × 2 tiles
    assert tensorboard.experiment.add_image.call_args.kwargs["global_step"] == 7
    logged = wandb.log_image.call_args.kwargs
    assert logged["key"] == "attention_maps" and logged["images"][0].shape == (62, 182, 3)
    assert not csv.method_calls


def test_needs_a_module_with_attention() -> None:
    callback = AttentionMaps()
    callback.images = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ConfigError, match="attention"):
        callback.on_validation_epoch_end(fake_trainer(), torch.nn.Linear(1, 1))
    with pytest.raises(ConfigError, match="num_images"):
        AttentionMaps(num_images=0)
