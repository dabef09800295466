"""MetricLearning: parameter groups, learning, and the stop on a non-finite loss."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from pytorch_metric_learning.losses import MarginLoss, MultiSimilarityLoss
from torch import nn

from lightning_dml.data import ClassBalanced, Digits
from lightning_dml.errors import TrainingError
from lightning_dml.methods import MetricLearning
from lightning_dml.models import SmallCNN


def test_parameter_groups_carry_their_own_learning_rates():
    model = MetricLearning(SmallCNN(widths=[8]), MarginLoss(learn_beta=True), backbone_lr=1e-4, loss_lr=5e-4)
    optimizer = model.configure_optimizers()
    lrs = [group.get("lr") for group in optimizer.param_groups]
    assert lrs == [1e-4, 1e-3, 5e-4]  # backbone, head (Adam's default), loss
    assert optimizer.param_groups[2]["params"] == [model.loss.beta]


def test_a_regulariser_adds_its_term_on_the_embeddings_and_the_backbones_output():
    from lightning_dml.losses import NeighbourhoodPreservation

    torch.manual_seed(0)
    term = NeighbourhoodPreservation(weight=0.5)
    model = MetricLearning(SmallCNN(widths=[8]), MultiSimilarityLoss(), embedding_size=4, regulariser=term)
    batch = {"image": torch.randn(6, 1, 8, 8), "label": torch.tensor([0, 0, 1, 1, 2, 2])}
    features = model.backbone(batch["image"])
    embeddings = model.head(features)
    expected = MultiSimilarityLoss()(embeddings, batch["label"]) + term(embeddings, features)
    torch.testing.assert_close(model.training_loss(batch), expected)


def test_training_lowers_the_loss_on_digits():
    torch.manual_seed(0)
    model = MetricLearning(SmallCNN(widths=[16, 32]), MultiSimilarityLoss(), embedding_size=16)
    data = Digits(validation=[], sampler=ClassBalanced(5, 8))
    data.setup()
    batch = next(iter(data.train_dataloader()))
    before = model.training_loss(batch).item()
    L.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, enable_checkpointing=False).fit(
        model, data
    )
    model.train()
    assert model.training_loss(batch).item() < 0.7 * before


class FailsAtStep(nn.Module):
    """A loss that turns NaN from a given optimisation step on."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, embeddings, labels, indices_tuple=None):
        self.calls += 1
        loss = embeddings.pow(2).mean()
        return loss * float("nan") if self.calls > self.step else loss


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = MetricLearning(SmallCNN(widths=[8]), FailsAtStep(3), embedding_size=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[checkpoint])
    with pytest.raises(TrainingError, match=r"at step 3 .*--ckpt_path .*last\.ckpt"):
        trainer.fit(model, Digits(validation=[], sampler=ClassBalanced(2, 4)))
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert all(
        torch.isfinite(value).all() for value in last["state_dict"].values() if value.is_floating_point()
    )
