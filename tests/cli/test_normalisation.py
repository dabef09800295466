"""The data is normalised with the built backbone's ``pretrained_cfg`` mean and std, typed in no config."""

import sys
from pathlib import Path

import pytest
import timm
import torchvision
import yaml
from torchvision.transforms import v2

from lightning_dml.cli import DMLCLI, main
from lightning_dml.data import Digits
from tests.conftest import REPO
from tests.data.tree_builders import cub_tree, validate_args

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")

TINY = {1: 3, 2: 2, 100: 2, 101: 2, 150: 3, 200: 2}
QUICKSTART = str(REPO / "configs/quickstart.yaml")
#: the backbone of :func:`validate_args`, whose statistics (0.5) are not the CUB default (ImageNet's)
TEST_RESNET = timm.get_pretrained_cfg("test_resnet")


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """No pytest arguments in ``sys.argv`` (LightningCLI would warn about them next to ``args``)."""
    monkeypatch.setattr(sys, "argv", ["lightning-dml"])


@pytest.fixture
def cub_args(tmp_path: Path) -> list[str]:
    """:func:`validate_args` of ``configs/resnet50_ms.yaml`` on a tiny CUB tree under ``tmp_path``."""
    cub_tree(tmp_path / "data", TINY)
    return validate_args("cub", tmp_path)


def normalisation(transform: v2.Compose) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` of the ``Normalize`` step of ``transform``."""
    (normalize,) = [step for step in transform.transforms if isinstance(step, v2.Normalize)]
    return tuple(normalize.mean), tuple(normalize.std)


def test_resnet50_ms_data_is_normalised_with_the_timm_backbones_statistics_in_every_set(cub_args):
    # a proxy loss needs the training classes: the sets are built before the model, then re-normalised
    loss = ["--model.init_args.loss", "pytorch_metric_learning.losses.NormalizedSoftmaxLoss"]
    cli = DMLCLI(args=[*cub_args, *loss], run=False)
    data = cli.datamodule
    expected = (TEST_RESNET.mean, TEST_RESNET.std)
    assert cli.model.pretrained_cfg["mean"] == TEST_RESNET.mean
    assert (data.preprocessing.mean, data.preprocessing.std) == expected
    for dataset in [data.train_set, data.test_set, *data.val_sets.values()]:
        assert normalisation(dataset.transform) == expected


def test_a_mean_in_the_config_other_than_the_backbones_is_refused_in_one_line(cub_args):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *cub_args, "--data.init_args.transforms.mean", "[0.1, 0.2, 0.3]"])
    assert exit_info.value.code == (
        "error: data.init_args.transforms.mean is [0.1, 0.2, 0.3], but it is set from the backbone's "
        "pretrained_cfg mean, [0.5, 0.5, 0.5]; leave it out of the config"
    )


def test_a_small_cnn_keeps_the_datasets_normalisation():
    cli = DMLCLI(args=["--config", QUICKSTART], run=False)
    assert cli.model.pretrained_cfg is None
    assert cli.datamodule.preprocessing.mean == Digits.default_preprocessing.mean
    assert cli.config.data.init_args.transforms.mean is None


def test_a_backbone_rebuilt_for_grey_images_keeps_the_datasets_normalisation():
    backbone = ["--model.init_args.backbone", "lightning_dml.models.TorchvisionBackbone"]
    cli = DMLCLI(args=["--config", QUICKSTART, *backbone], run=False)
    assert len(cli.model.pretrained_cfg["mean"]) == 3  # RGB statistics, but the backbone takes 1 channel
    assert cli.datamodule.preprocessing.mean == Digits.default_preprocessing.mean


def test_the_saved_config_records_the_applied_statistics_and_runs_again(cub_args, tmp_path):
    main(["validate", *cub_args])
    (path,) = (tmp_path / "runs").rglob("config.yaml")
    transforms = yaml.safe_load(path.read_text())["data"]["init_args"]["transforms"]
    assert (tuple(transforms["mean"]), tuple(transforms["std"])) == (TEST_RESNET.mean, TEST_RESNET.std)
    main(["validate", "--config", str(path)])  # the recorded values equal the backbone's: accepted


def test_deml_googlenet_without_weights_takes_torchvisions_weights_transforms_statistics(tmp_path):
    cub_tree(tmp_path / "data", TINY)
    offline = tmp_path / "offline.yaml"  # weights: null from the command line would be the string "None"
    offline.write_text("model:\n  init_args:\n    backbone:\n      init_args:\n        weights: null\n")
    configs = [REPO / "configs/data/cub.yaml", REPO / "configs/deml/release.yaml", offline]
    args = [
        *(arg for config in configs for arg in ("--config", str(config))),
        *("--data.init_args.root", str(tmp_path / "data"), "--data.init_args.allow_partial", "true"),
        *("--data.init_args.validation", "[test]", "--model.init_args.streams", "1"),
        *("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"),
        *("--trainer.logger.init_args.save_dir", str(tmp_path / "runs")),
    ]
    cli = DMLCLI(args=args, run=False)
    weights = torchvision.models.get_model_weights("googlenet").DEFAULT.transforms()
    expected = (tuple(weights.mean), tuple(weights.std))
    transforms = cli.config.data.init_args.transforms
    assert (tuple(transforms.mean), tuple(transforms.std)) == expected
    data = cli.datamodule
    data.setup()
    assert normalisation(data.train_set.transform) == normalisation(data.test_set.transform) == expected
