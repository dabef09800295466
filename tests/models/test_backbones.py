import socket

import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from jsonargparse import ArgumentError, ArgumentParser
from torchvision.models.feature_extraction import create_feature_extractor

from lightning_dml.errors import ConfigError
from lightning_dml.models import SmallCNN, TimmBackbone, TorchvisionBackbone


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No network at all: HF hub offline, empty weight caches, every socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the constant is patched too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(("name", "in_channels"), [("resnet18", 3), ("test_resnet", 1)])
def test_timm_backbone_gives_pooled_features(name: str, in_channels: int) -> None:
    backbone = TimmBackbone(name, in_channels=in_channels)
    features = backbone(torch.randn(2, in_channels, 64, 64))
    assert features.shape == (2, backbone.out_features)
    assert backbone.out_features == timm.create_model(name, num_classes=0).num_features
    assert len(backbone.pretrained_cfg["mean"]) == 3
    assert backbone.pretrained_cfg["input_size"][0] == 3


@pytest.fixture
def test_resnet_checkpoint(tmp_path) -> tuple[torch.nn.Module, str]:
    """A random timm test_resnet (eval mode, with its classifier) and the file its state dict is saved in."""
    model = timm.create_model("test_resnet").eval()
    checkpoint = tmp_path / "test_resnet.pth"
    torch.save(model.state_dict(), checkpoint)
    return model, str(checkpoint)


def test_timm_backbone_loads_checkpoint_path_and_matches_timm_pre_logits(test_resnet_checkpoint) -> None:
    reference, checkpoint = test_resnet_checkpoint
    backbone = TimmBackbone("test_resnet", checkpoint_path=checkpoint).eval()

    images = torch.randn(2, 3, 64, 64)
    expected = reference.forward_head(reference.forward_features(images), pre_logits=True)
    torch.testing.assert_close(backbone(images), expected)


def test_timm_checkpoint_first_conv_adapted_to_gray_input(test_resnet_checkpoint) -> None:
    reference, checkpoint = test_resnet_checkpoint
    backbone = TimmBackbone("test_resnet", in_channels=1, checkpoint_path=checkpoint).eval()

    gray = torch.rand(2, 1, 64, 64)
    expected = reference.forward_head(reference.forward_features(gray.expand(-1, 3, -1, -1)), pre_logits=True)
    torch.testing.assert_close(backbone(gray), expected)


def test_timm_bad_checkpoints_are_one_line_config_errors(tmp_path, test_resnet_checkpoint) -> None:
    reference, _ = test_resnet_checkpoint
    with pytest.raises(ConfigError, match="is not a file"):
        TimmBackbone("test_resnet", checkpoint_path=str(tmp_path / "missing.pth"))

    other_architecture = tmp_path / "test_vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), other_architecture)
    with pytest.raises(
        ConfigError, match=r"does not fit timm model 'test_resnet' \(\d+ weights missing"
    ) as error:
        TimmBackbone("test_resnet", checkpoint_path=str(other_architecture))
    assert "\n" not in str(error.value)

    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({**reference.state_dict(), "conv1.0.weight": torch.zeros(1, 3, 3, 3)}, wrong_shape)
    with pytest.raises(ConfigError, match=r"size mismatch for conv1\.0\.weight") as error:
        TimmBackbone("test_resnet", checkpoint_path=str(wrong_shape))
    assert "\n" not in str(error.value)


def test_timm_pretrained_offline_is_one_line_config_error(offline: None) -> None:
    with pytest.raises(ConfigError) as error:
        TimmBackbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert "could not be downloaded" in message
    assert "pretrained: false" in message
    assert "checkpoint_path" in message


def test_unknown_timm_model_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"timm\.list_models"):
        TimmBackbone("no_such_model")


@pytest.mark.parametrize(
    ("name", "in_channels", "out_features"),
    [("resnet18", 3, 512), ("resnet18", 1, 512), ("googlenet", 1, 1024)],
)
def test_torchvision_backbone_gives_features_in_train_and_eval(
    name: str, in_channels: int, out_features: int
) -> None:
    backbone = TorchvisionBackbone(name, in_channels=in_channels)
    images = torch.randn(2, in_channels, 64, 64)
    assert backbone.out_features == out_features
    assert backbone.train()(images).shape == (2, out_features)  # googlenet: no auxiliary outputs
    assert backbone.eval()(images).shape == (2, out_features)


def test_torchvision_resnet_features_match_its_flatten_node() -> None:
    backbone = TorchvisionBackbone("resnet18").eval()
    reference = torchvision.models.resnet18().eval()
    reference.load_state_dict(backbone.model.state_dict(), strict=False)  # everything but fc
    extractor = create_feature_extractor(reference, {"flatten": "features"})

    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone(images), extractor(images)["features"])


def test_torchvision_last_linear_of_classifier_is_removed() -> None:
    backbone = TorchvisionBackbone("mobilenet_v3_small")
    assert (
        backbone.out_features == 1024
    )  # classifier: Linear(576, 1024) → Hardswish → Dropout → Linear(1024, 1000)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 1024)


def test_torchvision_gray_input_averages_pretrained_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake 'pretrained' weights (no download): a gray image gives the RGB model's output on its 3 copies."""
    pretrained = torchvision.models.resnet18().eval()
    state = pretrained.state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *args, **kwargs: state)

    backbone = TorchvisionBackbone("resnet18", weights="IMAGENET1K_V1", in_channels=1).eval()

    torch.testing.assert_close(backbone.model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    gray = torch.rand(2, 1, 64, 64)
    pretrained.fc = torch.nn.Identity()
    torch.testing.assert_close(backbone(gray), pretrained(gray.expand(-1, 3, -1, -1)))
    assert backbone.weights == torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert backbone.pretrained_cfg == {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "input_size": (3, 224, 224),
    }


def test_torchvision_pretrained_offline_is_one_line_config_error(offline: None) -> None:
    with pytest.raises(ConfigError) as error:
        TorchvisionBackbone("resnet18", weights="DEFAULT")
    message = str(error.value)
    assert "\n" not in message
    assert "could not be downloaded" in message
    assert "weights: null" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "no_such_model"}, "list_models"),
        ({"weights": "NO_SUCH_WEIGHTS"}, "IMAGENET1K_V1"),
        ({"name": "squeezenet1_0"}, "no nn.Linear classifier"),
    ],
)
def test_torchvision_bad_names_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TorchvisionBackbone(**kwargs)


@pytest.mark.parametrize(("size", "map_size"), [(8, 2), (28, 3), (32, 4)])
def test_small_cnn_pools_while_map_is_larger_than_2px(size: int, map_size: int) -> None:
    # 8 → 4 → 2 → 2 (no pool at 2 px); 28 → 14 → 7 → 3; 32 → 16 → 8 → 4
    cnn = SmallCNN(in_channels=1)
    images = torch.randn(2, 1, size, size)
    feature_map = cnn.forward_features(images)
    assert feature_map.shape == (2, 128, map_size, map_size)
    torch.testing.assert_close(cnn(images), feature_map.mean(dim=(2, 3)))
    assert cnn.out_features == 128


def test_small_cnn_widths_and_channels() -> None:
    cnn = SmallCNN(in_channels=3, widths=[8, 16])
    assert cnn.out_features == 16
    assert cnn(torch.randn(4, 3, 32, 32)).shape == (4, 16)
    with pytest.raises(ConfigError, match="widths"):
        SmallCNN(widths=[])


def test_small_cnn_grid_features_are_the_last_blocks_7x7_map_before_its_pool_averaged_by_hand() -> None:
    torch.manual_seed(0)
    cnn = SmallCNN(in_channels=1, widths=[8, 16, 4], grid=7).eval()
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        x = F.max_pool2d(cnn.blocks[0](images), 2)  # 14 px
        x = F.max_pool2d(cnn.blocks[1](x), 2)  # 7 px
        last = cnn.blocks[2](x)  # (2, 4, 7, 7): a 7×7 grid is the map itself
        features = cnn(images)
    assert cnn.out_features == 4 * 49
    torch.testing.assert_close(features, last.flatten(1))
    cnn.grid = 1  # a 1×1 grid is the global average of the same map
    torch.testing.assert_close(cnn(images), last.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("init", "in_channels"),
    [
        (
            {
                "class_path": "lightning_dml.models.SmallCNN",
                "init_args": {"in_channels": 1, "widths": [8, 16]},
            },
            1,
        ),
        (
            {
                "class_path": "lightning_dml.models.TimmBackbone",
                "init_args": {"name": "test_resnet", "model_kwargs": {"drop_path_rate": 0.1}},
            },
            3,
        ),
        (
            {
                "class_path": "lightning_dml.models.TorchvisionBackbone",
                "init_args": {"name": "resnet18", "in_channels": 1},
            },
            1,
        ),
    ],
)
def test_backbones_build_from_class_path(init: dict, in_channels: int) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=torch.nn.Module)
    backbone = parser.instantiate_classes(parser.parse_object({"backbone": init})).backbone
    assert type(backbone).__name__ == init["class_path"].rsplit(".", 1)[1]
    assert backbone(torch.randn(2, in_channels, 32, 32)).shape == (2, backbone.out_features)


def test_class_path_arguments_are_type_checked() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=torch.nn.Module)
    bad = {"class_path": "lightning_dml.models.SmallCNN", "init_args": {"widths": "wide"}}
    with pytest.raises(ArgumentError, match="widths"):
        parser.parse_object({"backbone": bad})
