"""CifarResNet: ResNet-18 layout with a 3×3 stem and no max-pool, checked against torchvision's ResNet-18."""

import torch
import torchvision
from torch import nn

from lightning_dml.models import CifarResNet


def torchvision_cifar_resnet18() -> nn.Module:
    """Independent reference: torchvision's ResNet-18 with the CIFAR stem and no classifier."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool, model.fc = nn.Identity(), nn.Identity()
    return model


def test_resnet18_matches_torchvision_parameter_count_and_feature_size():
    ours, reference = CifarResNet(), torchvision_cifar_resnet18()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == 11_168_832
    assert ours.out_features == 512
    assert ours(torch.rand(2, 3, 32, 32)).shape == reference(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def test_the_stem_keeps_the_resolution_and_stages_halve_it():
    network = CifarResNet(in_channels=1, width=8).eval()
    sizes = []
    network.stem.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    for stage_start in (0, 2, 4, 6):
        network.stages[stage_start].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    features = network(torch.rand(3, 1, 28, 28))
    assert sizes == [28, 28, 14, 7, 4]
    assert network.out_features == 64 and features.shape == (3, 64)
