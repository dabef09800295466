"""DeML network: random-walk attention, the crop-box rule, the crop, channel attention, backbone splits."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from lightning_dml.errors import ConfigError
from lightning_dml.models import SmallCNN, TimmBackbone, TorchvisionBackbone
from lightning_dml.models.deml import (
    BackboneSplit,
    ChannelAttention,
    DeMLNetwork,
    DeMLStream,
    SplitSmallCNN,
    attention_crop_boxes,
    crop_and_resize,
    random_walk_attention,
    split_backbone,
)


def degree_equilibrium(features: np.ndarray, sigma: float) -> np.ndarray:
    """Independent reference: the walk's equilibrium is each node's weighted degree over the total."""
    channels, height, width = features.shape
    nodes = features.reshape(channels, -1).T
    positions = np.array([(r, c) for r in range(height) for c in range(width)], dtype=float)
    weights = cdist(nodes, nodes) * np.exp(-(cdist(positions, positions) ** 2) / (2 * sigma**2))
    degree = weights.sum(axis=0)
    return (degree / degree.sum()).reshape(height, width)


def test_power_iteration_converges_to_the_degree_equilibrium() -> None:
    features = torch.randn(2, 6, 5, 4, generator=torch.Generator().manual_seed(0))
    iterated = random_walk_attention(features, steps=300)
    exact = random_walk_attention(features, stationary=True)
    assert iterated.shape == (2, 5, 4)
    torch.testing.assert_close(iterated.sum(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(iterated, exact, atol=1e-6, rtol=1e-4)
    reference = degree_equilibrium(features[1].numpy(), sigma=0.15 * 5)
    np.testing.assert_allclose(exact[1].numpy(), reference, rtol=1e-5)
    # Ten steps (the release) are not yet the equilibrium, but close to it.
    ten = random_walk_attention(features, steps=10)
    assert not torch.allclose(ten, exact, atol=1e-7)


def test_constant_features_give_a_uniform_map() -> None:
    maps = random_walk_attention(torch.ones(1, 3, 4, 4))
    torch.testing.assert_close(maps, torch.full((1, 4, 4), 1 / 16))


def hand_map(*blobs: tuple[slice, slice, float]) -> torch.Tensor:
    """An 8×8 map of zeros with the given (rows, cols, value) blobs."""
    image = torch.zeros(8, 8)
    for rows, cols, value in blobs:
        image[rows, cols] = value
    return image


def test_box_rule_on_hand_made_maps() -> None:
    maps = torch.stack(
        [
            hand_map((slice(3, 5), slice(1, 7), 1.0)),  # single blob: w 6, h 2, centre (4, 4) -> side 4
            hand_map((slice(0, 2), slice(0, 2), 1.0), (slice(4, 7), slice(4, 7), 0.8)),  # two blobs
            hand_map(),  # empty: the full image
            hand_map((slice(0, 2), slice(0, 6), 1.0)),  # at the border: centre (3, 1), side 4, clipped at 0
        ]
    )
    boxes = attention_crop_boxes(maps, 8)
    assert boxes.dtype == torch.long
    expected = [[2, 2, 6, 6], [4, 4, 7, 7], [0, 0, 8, 8], [1, 0, 5, 3]]  # the larger, not the brighter blob
    assert boxes.tolist() == expected


def reference_boxes(maps: torch.Tensor, size: int) -> list[list[int]]:
    """The box rule image by image with scipy's labelling and find_objects (the independent reference)."""
    resized = torch.nn.functional.interpolate(
        maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
    ).squeeze(1)
    boxes = []
    for image in resized.numpy():
        labels, count = ndimage.label(image > image.mean(), structure=np.ones((3, 3)))
        if count == 0:
            boxes.append([0, 0, size, size])
            continue
        largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
        rows, cols = ndimage.find_objects(labels)[largest - 1]
        side = (cols.stop - cols.start + rows.stop - rows.start) / 2
        cx, cy = (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2
        box = [round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)]
        boxes.append([max(box[0], 0), max(box[1], 0), min(box[2], size), min(box[3], size)])
    return boxes


def test_batched_boxes_match_a_per_image_reference() -> None:
    maps = torch.rand(16, 5, 5, generator=torch.Generator().manual_seed(1)) ** 3
    assert attention_crop_boxes(maps, 40).tolist() == reference_boxes(maps, 40)


def test_crop_and_resize_crops_exactly_and_carries_no_gradient() -> None:
    images = torch.randn(2, 3, 8, 8, requires_grad=True)
    full = crop_and_resize(images, torch.tensor([[0, 0, 8, 8], [0, 0, 8, 8]]))
    torch.testing.assert_close(full, images.detach())
    corner = crop_and_resize(images, torch.tensor([[0, 0, 4, 4], [4, 2, 8, 6]]), size=4)
    torch.testing.assert_close(corner[0], images[0, :, :4, :4].detach())
    torch.testing.assert_close(corner[1], images[1, :, 2:6, 4:8].detach())
    assert not full.requires_grad


def test_channel_attention_masks_every_channel_at_every_position() -> None:
    attention = ChannelAttention(channels=16, hidden=8)
    features = torch.randn(2, 16, 5, 5)
    mask = attention.mask(features)
    assert mask.shape == (2, 16, 5, 5)
    assert ((mask > 0) & (mask < 1)).all()
    assert mask.std(dim=(2, 3)).min() > 0  # varies over positions: not a pooled squeeze-and-excitation vector
    torch.testing.assert_close(attention(features), features * mask)


def test_new_layers_start_as_the_release_caffe_xavier_weights_and_zero_biases() -> None:
    # Caffe's XavierFiller (variance_norm FAN_IN): uniform on ±sqrt(3 / n), n = fan_in, so variance 1 / n.
    torch.manual_seed(0)
    split = BackboneSplit(torch.nn.Identity(), torch.nn.Identity(), trunk_channels=512, out_channels=1024)
    stream = DeMLStream(split, learners=2, embedding_size=512, channel_attention=True, hidden=64)
    layers = [(stream.embeddings[0].weight, 1024)]  # 512 × 1024 weights
    for attention in stream.attentions:
        layers += [(attention.layers[0].weight, 512), (attention.layers[2].weight, 64)]  # CAMxa, CAMxb
        assert not attention.layers[0].bias.any() and not attention.layers[2].bias.any()  # constant 0
    for weight, fan_in in layers:
        bound = math.sqrt(3 / fan_in)
        assert bound * 0.99 < weight.abs().max() <= bound
        assert weight.double().var().item() == pytest.approx(1 / fan_in, rel=0.03)
    assert stream.embeddings[0].weight.double().var().item() == pytest.approx(1 / 1024, rel=0.01)
    assert stream.embeddings[0].bias is None


@pytest.mark.parametrize(
    ("backbone", "trunk_channels", "out_channels"),
    [
        (lambda: TorchvisionBackbone("googlenet"), 512, 1024),
        (lambda: TimmBackbone("resnet18"), 256, 512),
        (lambda: TorchvisionBackbone("resnet18"), 256, 512),
    ],
    ids=["googlenet", "timm-resnet18", "torchvision-resnet18"],
)
def test_split_shapes_without_downloads(backbone, trunk_channels: int, out_channels: int) -> None:
    split = split_backbone(backbone())
    trunk = split.trunk(torch.randn(2, 3, 96, 96))
    upper = split.upper(trunk)
    assert (split.trunk_channels, split.out_channels) == (trunk_channels, out_channels)
    assert trunk.shape == (2, trunk_channels, 6, 6)  # stride 16, as 14×14 at 224 px
    assert upper.shape == (2, out_channels, 3, 3)  # stride 32, as 7×7 at 224 px


def test_small_cnn_split_keeps_a_7x7_map_and_others_are_refused() -> None:
    split = split_backbone(SplitSmallCNN())
    trunk = split.trunk(torch.randn(2, 1, 28, 28))
    assert trunk.shape == (2, 64, 7, 7)
    assert split.upper(trunk).shape == (2, 128, 7, 7)
    with pytest.raises(ConfigError, match="cannot split SmallCNN"):
        split_backbone(SmallCNN())


def small_network(**kwargs) -> DeMLNetwork:
    torch.manual_seed(0)
    return DeMLNetwork(SplitSmallCNN(widths=(8, 16, 16)), streams=2, learners=3, embedding_size=8, **kwargs)


def test_gradients_reach_every_channel_attention_and_none_passes_the_crop() -> None:
    network = small_network()
    output = network(torch.randn(6, 1, 28, 28))
    assert output.embeddings.shape == (2, 3, 6, 8)
    output.embeddings.square().sum().backward()
    for stream in network.streams:
        for attention in stream.attentions:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attention.parameters())
    network.zero_grad(set_to_none=True)
    output = network(torch.randn(6, 1, 28, 28))
    output.embeddings[1].square().sum().backward()  # stream 2 only: its input is stream 1's crop
    assert output.inputs[1].grad_fn is None
    # Stacking the streams' embeddings hands stream 1 an all-zero gradient: it gets nothing from stream 2.
    assert all(p.grad is None or not p.grad.any() for p in network.streams[0].parameters())
    assert all(p.grad is not None for p in network.streams[1].parameters())


def test_streams_see_the_crop_or_the_image_and_the_test_embedding_order() -> None:
    images = torch.randn(4, 1, 28, 28)
    network = small_network().eval()
    output = network(images, with_attention=True)
    assert output.maps.shape == (2, 4, 7, 7) and output.boxes.shape == (2, 4, 4)
    expected = crop_and_resize(images, output.boxes[0])
    torch.testing.assert_close(output.inputs[1], expected)
    concatenated = output.concatenated()
    normalized = output.normalized()
    for stream in range(2):
        for learner in range(3):
            block = 3 * stream + learner
            torch.testing.assert_close(
                concatenated[:, 8 * block : 8 * (block + 1)], normalized[stream, learner]
            )
    no_crop = small_network(object_attention=False).eval()(images)
    torch.testing.assert_close(no_crop.inputs[1], images)
    assert no_crop.maps is None


def test_without_channel_attention_learners_have_their_own_embedding_layers() -> None:
    network = small_network(channel_attention=False)
    output = network(torch.randn(4, 1, 28, 28))
    assert len(network.streams[0].attentions) == 0 and len(network.streams[0].embeddings) == 3
    assert not torch.allclose(output.embeddings[0, 0], output.embeddings[0, 1])


@pytest.mark.parametrize(
    "backbone",
    [lambda: TorchvisionBackbone("googlenet"), lambda: TimmBackbone("resnet18")],
    ids=["googlenet", "resnet18"],
)
def test_deml_network_runs_on_imagenet_backbones(backbone) -> None:
    network = DeMLNetwork(backbone(), streams=2, learners=2, embedding_size=8).eval()
    output = network(torch.randn(2, 3, 64, 64), with_attention=True)
    assert output.embeddings.shape == (2, 2, 2, 8) and output.maps.shape == (2, 2, 2, 2)
    assert ((output.boxes[..., 2:] > output.boxes[..., :2]) & (output.boxes[..., 2:] <= 64)).all()
