"""LatestAndBestCheckpoint: ``last.ckpt`` is the latest epoch, the best checkpoint is kept apart."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dml.callbacks import LatestAndBestCheckpoint
from lightning_dml.errors import ConfigError


class Worsening(L.LightningModule):
    """A linear model whose logged validation score gets worse every epoch: the best stays epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, checkpoint: LatestAndBestCheckpoint, validate: bool = True) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    L.Trainer(
        max_epochs=4,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    ).fit(Worsening(), loader, loader if validate else None)


def epoch_of(path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "no_validation"])
def test_last_is_the_latest_epoch_and_the_best_stays(tmp_path, validate):
    checkpoint = LatestAndBestCheckpoint(
        dirpath=tmp_path, monitor="val/score" if validate else None, mode="max", save_last=True
    )
    fit(tmp_path, checkpoint, validate)
    assert epoch_of(tmp_path / "last.ckpt") == 3
    assert checkpoint.last_model_path == str(tmp_path / "last.ckpt")
    assert epoch_of(checkpoint.best_model_path) == (0 if validate else 3)
    assert len(list(tmp_path.glob("*.ckpt"))) == 2


def test_save_last_link_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="set save_last: true"):
        fit(tmp_path, LatestAndBestCheckpoint(dirpath=tmp_path, save_last="link"))
