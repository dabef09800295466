"""GeminiNetwork: stream feature sizes, routing by stream id, and gradient only in the active streams."""

import pytest
import torch

from lightning_dml.errors import ConfigError, DataError
from lightning_dml.models import GeminiNetwork


@pytest.mark.parametrize(
    ("channels", "size", "padding", "features"), [(1, 28, 0, 1024), (3, 32, 0, 1600), (1, 8, 2, 256)]
)
def test_feature_size_follows_the_paper_shapes(channels, size, padding, features):
    network = GeminiNetwork(3, channels, size, embedding_size=2, padding=padding)
    outputs, stream_features = network(torch.rand(4, channels, size, size), torch.tensor([0, 1, 2, 0]))
    assert network.feature_size == features
    assert outputs.shape == (4, 2) and stream_features.shape == (4, features)


def test_each_image_goes_through_its_own_stream_then_the_shared_head():
    torch.manual_seed(0)
    network = GeminiNetwork(3)
    images, ids = torch.rand(5, 1, 28, 28), torch.tensor([2, 0, 2, 1, 0])
    outputs, features = network(images, ids)
    for b in range(5):
        expected = network.streams[int(ids[b])](images[b : b + 1])
        torch.testing.assert_close(features[b : b + 1], expected)
        torch.testing.assert_close(outputs[b : b + 1], network.head(expected))


def test_only_the_two_active_streams_get_gradient():
    network = GeminiNetwork(4)
    outputs, features = network(torch.rand(6, 1, 28, 28), torch.tensor([1, 1, 1, 3, 3, 3]))
    (outputs.sum() + features.sum()).backward()
    touched = [
        any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters()) for s in network.streams
    ]
    assert touched == [False, True, False, True]
    assert all(p.grad is not None for p in network.head.parameters())


def test_bad_stream_ids_and_tiny_images_raise_one_line_errors():
    network = GeminiNetwork(2)
    with pytest.raises(DataError, match=r"stream ids must lie in 0\.\.1"):
        network(torch.rand(2, 1, 28, 28), torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="padding: 2"):
        GeminiNetwork(2, image_size=8)
