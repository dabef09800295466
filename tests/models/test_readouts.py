"""Readouts: pooled features of named layers, checked against the layers called by hand; the projection."""

import pytest
import torch
import torch.nn.functional as F

from lightning_dml.errors import ConfigError
from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.methods import DeML, MetricLearning
from lightning_dml.models import LayerReadouts, Readout, SmallCNN, SplitSmallCNN
from lightning_dml.models.readouts import random_projection


def small_model() -> MetricLearning:
    torch.manual_seed(0)
    return MetricLearning(SmallCNN(1, widths=(4, 6)), BinomialDevianceLoss(), embedding_size=5).eval()


def second_block_by_hand(model: MetricLearning, images: torch.Tensor) -> torch.Tensor:
    """The second block's output (B, 6, 6, 6) of 12 px images, calling the sub-modules one by one."""
    blocks = model.backbone.blocks
    return blocks[1](F.max_pool2d(blocks[0](images), 2))


def test_each_pooling_equals_the_layer_pooled_by_hand():
    model, images = small_model(), torch.randn(5, 1, 12, 12)
    readouts = LayerReadouts(
        model,
        {
            "gap": Readout("backbone.blocks.1"),
            "gem": Readout("backbone.blocks.1", pooling="gem", p=3.0),
            "grid": Readout("backbone.blocks.1", pooling="grid", size=3),
            "head": Readout("head"),
        },
    ).eval()
    with torch.no_grad():
        features = readouts(images)
        maps = second_block_by_hand(model, images)
        embeddings = model(images)
    blocks = maps.reshape(5, 6, 3, 2, 3, 2).mean(dim=(3, 5))  # 2×2 cells of the 6×6 map
    torch.testing.assert_close(features["gap"], maps.mean(dim=(2, 3)))
    torch.testing.assert_close(features["gem"], maps.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3))
    torch.testing.assert_close(features["grid"], blocks.flatten(1))
    torch.testing.assert_close(features["head"], embeddings)  # a (B, D) layer is taken as it is


def test_readouts_share_the_network_weights():
    model, images = small_model(), torch.randn(3, 1, 12, 12)
    readouts = LayerReadouts(model, {"gap": Readout("backbone.blocks.1")}).eval()
    with torch.no_grad():
        model.backbone.blocks[1][0].weight.mul_(-2)
        torch.testing.assert_close(
            readouts(images)["gap"], second_block_by_hand(model, images).mean(dim=(2, 3))
        )


def test_random_projection_is_seeded_and_scaled():
    first, again = random_projection(300, 50, seed=3), random_projection(300, 50, seed=3)
    assert torch.equal(first, again)
    assert not torch.equal(first, random_projection(300, 50, seed=4))
    assert first.std().item() == pytest.approx(50**-0.5, rel=0.05)  # entries N(0, 1/out_dim)


def test_wide_readouts_are_projected_deterministically():
    model, images = small_model(), torch.randn(4, 1, 12, 12)
    readout = Readout("backbone.blocks.1", pooling="grid", size=3, max_dim=10, seed=7)  # 54 > 10 dims
    with torch.no_grad():
        projected = LayerReadouts(model, {"grid": readout})(images)["grid"]
        again = LayerReadouts(model, {"grid": readout})(images)["grid"]
        pooled = second_block_by_hand(model, images).reshape(4, 6, 3, 2, 3, 2).mean(dim=(3, 5)).flatten(1)
    assert projected.shape == (4, 10)
    torch.testing.assert_close(projected, pooled @ random_projection(54, 10, seed=7))
    assert torch.equal(projected, again)


def test_unknown_layer_and_bad_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="not found"):
        LayerReadouts(small_model(), {"x": Readout("backbone.nowhere")})
    with pytest.raises(ConfigError, match="without '/'"):
        LayerReadouts(small_model(), {"a/b": Readout("backbone.blocks.1")})


def test_deml_traces_so_its_trunk_and_test_embedding_are_readouts():
    torch.manual_seed(0)
    backbone = SplitSmallCNN(in_channels=1, pooled_blocks=2)
    model = DeML(backbone, streams=2, learners=3, embedding_size=8).eval()
    trunk = "network.streams.0.trunk.1.3"
    readouts = LayerReadouts(model, {"grid": Readout(trunk, "grid", size=7), "embedding": Readout("flatten")})
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        features = readouts(images)
        expected_grid = model.network.streams[0].trunk(images).flatten(1)  # already 7×7
        assert torch.equal(features["grid"], expected_grid)
        assert torch.equal(features["embedding"], model.embed(images))
