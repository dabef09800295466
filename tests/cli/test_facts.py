"""Facts the data module knows reach the model without being typed in the config (``cli_facts``)."""

import sys

import pytest
import torch

from lightning_dml.cli import DMLCLI, main
from lightning_dml.inference import load_embedder
from tests.conftest import REPO

QUICKSTART = str(REPO / "configs/quickstart.yaml")


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """No pytest arguments in ``sys.argv`` (LightningCLI would warn about them next to ``args``)."""
    monkeypatch.setattr(sys, "argv", ["lightning-dml"])


def built(*args: str) -> DMLCLI:
    """The CLI's objects for ``args``, without running a subcommand."""
    return DMLCLI(args=list(args), run=False)


def first_conv(module: torch.nn.Module) -> torch.nn.Conv2d:
    """The first convolution of ``module``."""
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(("data", "channels"), [([], 1), (["--data", "lightning_dml.data.CIFAR10"], 3)])
def test_backbone_input_channels_come_from_the_data(data, channels):
    cli = built("--config", QUICKSTART, *data)
    assert first_conv(cli.model.backbone).in_channels == channels
    assert cli.model.hparams["backbone"]["init_args"]["in_channels"] == channels  # saved with the run


def test_proxy_loss_gets_the_training_classes_and_the_embedding_size():
    cli = built(
        "--config",
        QUICKSTART,
        "--model.init_args.loss",
        "pytorch_metric_learning.losses.NormalizedSoftmaxLoss",
    )
    # quickstart: 64-d embeddings, digits 0-4 train (its validation holds out images, not classes)
    assert (
        cli.model.loss.W.shape == (64, 5) == (cli.model.head.embedding_size, cli.datamodule.num_train_classes)
    )


def test_the_data_module_that_gave_the_facts_is_the_run_s():
    cli = built(
        "--config",
        QUICKSTART,
        "--model.init_args.loss",
        "pytorch_metric_learning.losses.NormalizedSoftmaxLoss",
    )
    assert cli.config_init["data"] is cli.datamodule and cli.datamodule.train_set is not None  # set up once


def test_a_fact_set_to_another_value_in_the_config_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--model.init_args.backbone.init_args.in_channels", "3"])
    assert "in_channels is 3, but it is set from the data module's (Digits) num_channels, 1" in str(
        exit_info.value.code
    )


def test_a_checkpoint_of_a_run_rebuilds_its_model(tmp_path):
    cli = built(
        "--config",
        QUICKSTART,
        "--model.init_args.loss",
        "pytorch_metric_learning.losses.NormalizedSoftmaxLoss",
    )
    cli.trainer.strategy.connect(cli.model)
    path = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(path, weights_only=True)
    embedder = load_embedder(path)
    images = torch.rand(2, 1, 8, 8)
    cli.model.eval()
    torch.testing.assert_close(embedder(images), cli.model.embed(images))


def test_a_parameter_whose_default_is_none_keeps_its_meaning():
    margin = str(REPO / "configs/losses/margin.yaml")
    cli = built("--config", QUICKSTART, "--config", margin)
    assert (
        cli.model.hparams["loss"]["init_args"]["num_classes"] is None
    )  # one β for all classes, as configured
    assert cli.model.loss.beta.numel() == 1
