"""RetrievalModule: the non-finite loss message says what is true, and its advice (resume with a lower
learning rate) works: a configured learning rate that differs from the checkpoint's is applied on resume."""

import logging
import re
from functools import partial

import lightning as L
import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss

from lightning_dml.callbacks import LatestAndBestCheckpoint
from lightning_dml.data import ClassBalanced, Digits
from lightning_dml.errors import TrainingError
from lightning_dml.methods import MetricLearning
from lightning_dml.models import SmallCNN


class NaNLoss(ContrastiveLoss):
    """A contrastive loss that is NaN from the first step on."""

    def forward(self, embeddings, labels, indices_tuple=None):
        return super().forward(embeddings, labels, indices_tuple) * float("nan")


def model(lr: float, scheduler=None, loss: torch.nn.Module | None = None) -> MetricLearning:
    torch.manual_seed(0)
    return MetricLearning(
        SmallCNN(widths=[8]),
        loss or ContrastiveLoss(),
        embedding_size=4,
        optimizer=partial(torch.optim.SGD, lr=lr),
        scheduler=scheduler,
    )


def fit(module: MetricLearning, tmp_path, epochs: int, ckpt_path: str | None = None, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(module, Digits(validation=[], sampler=ClassBalanced(2, 4)), ckpt_path=ckpt_path)
    return trainer


def test_non_finite_loss_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingError, match=r"at step 0 .*no checkpoint was saved yet: start again") as error:
        fit(model(0.1, loss=NaNLoss()), tmp_path, 1)
    assert "--ckpt_path" not in str(error.value) and "intact" not in str(error.value)


def test_non_finite_loss_names_the_checkpoint_saved_before_it(tmp_path):
    fit(model(0.1), tmp_path, 1, callbacks=[LatestAndBestCheckpoint(dirpath=tmp_path, save_last=True)])
    last = re.escape(str(tmp_path / "last.ckpt"))
    with pytest.raises(TrainingError, match=rf"at step 3 .*checkpoint {last} was saved before it.*{last}"):
        checkpoint = LatestAndBestCheckpoint(dirpath=tmp_path, save_last=True)
        fit(model(0.1, loss=NaNLoss()), tmp_path, 2, str(tmp_path / "last.ckpt"), callbacks=[checkpoint])


@pytest.mark.parametrize(
    ("scheduler", "final_lr"),
    [(None, 0.01), (partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5), 0.01 * 0.5**2)],
    ids=["constant", "step_schedule"],
)
def test_a_lower_configured_learning_rate_replaces_the_checkpoints_on_resume(
    tmp_path, caplog, scheduler, final_lr
):
    checkpoint = LatestAndBestCheckpoint(dirpath=tmp_path, save_last=True)
    fit(model(0.1, scheduler), tmp_path, 1, callbacks=[checkpoint])
    with caplog.at_level(logging.INFO):
        trainer = fit(model(0.01, scheduler), tmp_path, 2, str(tmp_path / "last.ckpt"))
    assert trainer.current_epoch == 2  # resumed: the second epoch only, as if configured with 0.01 throughout
    assert [group["lr"] for group in trainer.optimizers[0].param_groups] == pytest.approx([final_lr] * 2)
    assert "the configured learning rate 0.01 replaces the checkpoint's 0.1" in caplog.text


def test_weights_loaded_from_a_checkpoint_without_resuming_train_at_the_configured_rate(tmp_path):
    fit(model(0.1), tmp_path, 1, callbacks=[LatestAndBestCheckpoint(dirpath=tmp_path, save_last=True)])
    loaded = MetricLearning.load_from_checkpoint(
        tmp_path / "last.ckpt",
        backbone=SmallCNN(widths=[8]),
        loss=ContrastiveLoss(),
        optimizer=partial(torch.optim.SGD, lr=0.01),
    )
    trainer = fit(loaded, tmp_path, 1)
    assert [group["lr"] for group in trainer.optimizers[0].param_groups] == [0.01, 0.01]
