"""Every data module's transforms come from ``data/transforms.py``; each recipe is checked against the
``v2.Compose`` written out by hand, on a fixed image with a fixed seed, for training and evaluation."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from lightning_dml.data import CIFAR10, CIFAR100, CUB200, MNIST, Digits, FashionMNIST, ImageFolder, Transforms
from lightning_dml.data.transforms import IMAGENET_MEAN, IMAGENET_STD, raw_pixel_transform

RNG = np.random.default_rng(0)
PHOTO = Image.fromarray(RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8))


def small(channels: int, size: int) -> torch.Tensor:
    return torch.from_numpy(RNG.integers(0, 256, (channels, size, size), dtype=np.uint8))


def scaled(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def assert_same(transform, expected: v2.Compose, image) -> None:
    """Both transforms give the same tensor from ``image`` with torch's generator at the same seed."""
    torch.manual_seed(3)
    ours = transform(image)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, expected(image), rtol=0, atol=0)


SMALL = [
    (Digits, {}, small(1, 8), [v2.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1))]),
    (MNIST, {"root": "x"}, small(1, 28), [v2.RandomAffine(degrees=10, translate=(0.1, 0.1))]),
    (FashionMNIST, {"root": "x"}, small(1, 28), [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()]),
    (CIFAR10, {"root": "x"}, small(3, 32), [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]),
    (CIFAR100, {"root": "x"}, small(3, 32), [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]),
]
STATISTICS = {
    Digits: ((0.305,), (0.376,)),
    MNIST: ((0.1307,), (0.3081,)),
    FashionMNIST: ((0.2860,), (0.3530,)),
    CIFAR10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    CIFAR100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@pytest.mark.parametrize(
    ("module", "options", "image", "augmentation"), SMALL, ids=lambda v: getattr(v, "__name__", "")
)
def test_small_images_get_the_datasets_augmentation_then_normalisation(module, options, image, augmentation):
    data = module(validation=[], **options)
    mean, std = STATISTICS[module]
    assert_same(
        data.transform(train=True), v2.Compose([v2.ToImage(), *augmentation, *scaled(mean, std)]), image
    )
    assert_same(data.transform(train=False), v2.Compose([v2.ToImage(), *scaled(mean, std)]), image)


def test_raw_pixels_without_augmentation_are_float_0_to_255_in_training_and_evaluation():
    data = Digits(validation=[], transforms=Transforms(raw_pixels=True, augment=False))
    raw = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)])
    image = small(1, 8)
    for train in (True, False):
        assert_same(data.transform(train), raw, image)
    assert_same(raw_pixel_transform(Digits(validation=[]).preprocessing), raw, image)
    assert data.preprocessing.display_normalisation() == ((0.0,), (1 / 255,))


def test_image_folders_get_imagenet_style_crops():
    data = ImageFolder(root="x", validation=[], transforms=Transforms(image_size=64))
    train = [
        v2.ToImage(),
        v2.RandomResizedCrop(64),
        v2.RandomHorizontalFlip(),
        *scaled(IMAGENET_MEAN, IMAGENET_STD),
    ]
    evaluation = [v2.ToImage(), v2.Resize(64), v2.CenterCrop(64), *scaled(IMAGENET_MEAN, IMAGENET_STD)]
    assert_same(data.transform(train=True), v2.Compose(train), PHOTO)
    assert_same(data.transform(train=False), v2.Compose(evaluation), PHOTO)


def test_benchmarks_resize_then_crop_with_the_given_scale_and_normalisation():
    transforms = Transforms(crop_scale=(0.3, 1.0), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    data = CUB200(root="x", validation=[], transforms=transforms)
    norm = scaled((0.5,) * 3, (0.25,) * 3)
    train = [
        v2.ToImage(),
        v2.Resize(256),
        v2.RandomResizedCrop(224, scale=(0.3, 1.0)),
        v2.RandomHorizontalFlip(),
    ]
    evaluation = [v2.ToImage(), v2.Resize(256), v2.CenterCrop(224)]
    assert_same(data.transform(train=True), v2.Compose([*train, *norm]), PHOTO)
    assert_same(data.transform(train=False), v2.Compose([*evaluation, *norm]), PHOTO)


def test_the_deml_recipe_is_a_fixed_resize_and_a_plain_random_crop():
    # configs/deml/*.yaml: transforms {image_size: 227, resize: [256, 256], crop: random}, ImageNet statistics
    data = CUB200(
        root="x", validation=[], transforms=Transforms(image_size=227, resize=(256, 256), crop="random")
    )
    norm = scaled(IMAGENET_MEAN, IMAGENET_STD)
    train = [v2.ToImage(), v2.Resize([256, 256]), v2.RandomCrop(227), v2.RandomHorizontalFlip(), *norm]
    evaluation = [v2.ToImage(), v2.Resize([256, 256]), v2.CenterCrop(227), *norm]
    assert_same(data.transform(train=True), v2.Compose(train), PHOTO)
    assert_same(data.transform(train=False), v2.Compose(evaluation), PHOTO)


def test_normalise_with_changes_the_transforms_of_the_sets_already_built():
    data = Digits(validation=["seen", "unseen"], val_classes=2)
    data.setup()
    data.normalise_with([0.5], [0.25])
    affine = v2.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1))
    image = small(1, 8)
    assert_same(data.train_set.transform, v2.Compose([v2.ToImage(), affine, *scaled((0.5,), (0.25,))]), image)
    for dataset in [data.test_set, *data.val_sets.values()]:
        assert_same(dataset.transform, v2.Compose([v2.ToImage(), *scaled((0.5,), (0.25,))]), image)
    assert data.preprocessing.display_normalisation() == ((0.5,), (0.25,))


@pytest.mark.parametrize("raw_pixels", [False, True])
def test_uint8_geometry_then_batched_scaling_equals_the_whole_transform(raw_pixels):
    preprocessing = CUB200.default_preprocessing
    preprocessing = Transforms(raw_pixels=raw_pixels).resolve(preprocessing)
    for train in (True, False):
        torch.manual_seed(3)
        whole = torch.stack([preprocessing.transform(train)(PHOTO) for _ in range(2)])
        torch.manual_seed(3)
        crops = torch.stack([preprocessing.transform(train, scale=False)(PHOTO) for _ in range(2)])
        assert crops.dtype == torch.uint8
        torch.testing.assert_close(preprocessing.scaling()(crops), whole, rtol=0, atol=0)
        torch.testing.assert_close(preprocessing.scale_batch(crops), whole, rtol=0, atol=0)
        channels_last = preprocessing.scale_batch(crops.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(channels_last, whole, rtol=0, atol=0)
        assert channels_last.is_contiguous(memory_format=torch.channels_last)
