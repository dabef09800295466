import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import v2

from lightning_dml.data import CIFAR10, CIFAR100, MNIST, FashionMNIST
from lightning_dml.data.torchvision_sets import as_nchw_uint8
from lightning_dml.errors import DataError

SHARED_DATASETS = Path(__file__).parents[2] / "../shared/datasets"


@pytest.fixture(scope="module")
def fashion() -> FashionMNIST:
    """The real Fashion-MNIST copy, zero-shot, set up once for the whole module."""
    if not (SHARED_DATASETS / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"Fashion-MNIST not found under {SHARED_DATASETS}")
    module = FashionMNIST(root=str(SHARED_DATASETS), validation=["test"])
    module.setup()
    return module


def test_fashion_zero_shot_trains_on_classes_0_to_4_of_the_train_file_and_tests_on_5_to_9(fashion):
    train_classes, train_counts = fashion.train_set.class_ids.unique(return_counts=True)
    test_classes, test_counts = fashion.test_set.class_ids.unique(return_counts=True)
    assert len(fashion.train_set) == 30_000 and len(fashion.test_set) == 5_000
    assert train_classes.tolist() == [0, 1, 2, 3, 4] and train_counts.tolist() == [6_000] * 5
    assert test_classes.tolist() == [5, 6, 7, 8, 9] and test_counts.tolist() == [1_000] * 5
    assert len(fashion.train_set.source) == 60_000 and len(fashion.test_set.source) == 10_000


def test_fashion_items_are_normalised_1x28x28_float_images(fashion):
    raw = fashion.test_set.source.load(int(fashion.test_set.indices[3]))
    assert raw.shape == (1, 28, 28) and raw.dtype == torch.uint8
    item = fashion.test_set[3]
    expected = (
        raw.float() / 255 - FashionMNIST.default_preprocessing.mean[0]
    ) / FashionMNIST.default_preprocessing.std[0]
    assert item["image"].shape == (1, 28, 28) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], expected)
    assert item["label"] == int(fashion.test_set.class_ids[3]) and item["index"] == 3
    assert fashion.train_set[0]["image"].shape == (1, 28, 28)


def test_fashion_normalisation_constants_match_the_training_pixels(fashion):
    counts = torch.bincount(fashion.train_set.source.images.flatten(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * levels).sum() / counts.sum()
    std = ((counts * (levels - mean) ** 2).sum() / counts.sum()).sqrt()
    assert mean.item() == pytest.approx(FashionMNIST.default_preprocessing.mean[0], abs=1e-3)
    assert std.item() == pytest.approx(FashionMNIST.default_preprocessing.std[0], abs=1e-3)


def test_fashion_closed_set_uses_all_classes_of_both_files():
    if not (SHARED_DATASETS / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"Fashion-MNIST not found under {SHARED_DATASETS}")
    train, test = FashionMNIST(root=str(SHARED_DATASETS), protocol="closed_set").build()
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.class_ids.unique().tolist() == test.class_ids.unique().tolist() == list(range(10))


def test_as_nchw_uint8_adds_or_moves_the_channel_axis():
    grey = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    assert torch.equal(as_nchw_uint8(grey), grey[:, None])
    colour = np.arange(72, dtype=np.uint8).reshape(2, 3, 4, 3)
    moved = as_nchw_uint8(colour)
    assert moved.shape == (2, 3, 3, 4)
    assert moved[1, 2, 0, 3].item() == colour[1, 0, 3, 2]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format torchvision's MNIST reader parses."""
    magic = 2048 + array.ndim  # 0x08 = unsigned byte, then the number of dimensions
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, name: str = "MNIST") -> Path:
    """Write an MNIST tree: 20 training and 10 test images; image i has label i % 10 and every pixel i."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 20), ("t10k", 10)):
        write_idx(
            raw / f"{prefix}-images-idx3-ubyte", np.arange(count)[:, None, None].repeat(28, 1).repeat(28, 2)
        )
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return raw


def test_mnist_reads_torchvision_layout_and_splits_zero_shot(tmp_path):
    write_fake_mnist(tmp_path)
    train, test = MNIST(root=str(tmp_path)).build()
    assert train.indices.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert test.indices.tolist() == [5, 6, 7, 8, 9]
    image = test.source.load(7)
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and (image == 7).all()


def write_fake_cifar(root: Path, dataset_class: type, labels_key: str, names_key: str, per_file: int) -> None:
    """Write a CIFAR tree (pickled batches); image i of each file has label i and channel c all i + 100·c."""
    folder = root / dataset_class.base_folder
    folder.mkdir(parents=True)
    for name, _ in [*dataset_class.train_list, *dataset_class.test_list]:
        images = np.stack([np.repeat([i, i + 100, i + 200], 32 * 32) for i in range(per_file)]).astype(
            np.uint8
        )
        (folder / name).write_bytes(pickle.dumps({"data": images, labels_key: list(range(per_file))}))
    (folder / dataset_class.meta["filename"]).write_bytes(pickle.dumps({names_key: ["a", "b"]}))


def test_cifar100_trains_on_classes_0_to_49_of_the_train_file_and_tests_on_50_to_99(tmp_path, monkeypatch):
    # torchvision checks the md5 of the official files; these are hand-made stand-ins
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    write_fake_cifar(tmp_path, torchvision.datasets.CIFAR100, "fine_labels", "fine_label_names", per_file=100)
    train, test = CIFAR100(root=str(tmp_path)).build()
    assert train.class_ids.tolist() == list(range(50)) and test.class_ids.tolist() == list(range(50, 100))
    image = test.source.load(60)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert image[:, 5, 7].tolist() == [60, 160, 4]  # 260 wraps to 4 in uint8


def test_cifar10_reads_five_training_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    write_fake_cifar(tmp_path, torchvision.datasets.CIFAR10, "labels", "label_names", per_file=10)
    train, test = CIFAR10(root=str(tmp_path), protocol="closed_set").build()
    assert (len(train), len(test)) == (50, 10)
    assert train.source.load(13)[:, 0, 0].tolist() == [3, 103, 203]


@pytest.mark.parametrize(
    ("module_class", "folder", "files"),
    [
        (MNIST, "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        (FashionMNIST, "FashionMNIST/raw", ["train-labels-idx1-ubyte"]),
        (CIFAR10, "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
        (CIFAR100, "cifar-100-python", ["train", "test", "meta"]),
    ],
)
def test_missing_dataset_names_folder_files_and_fix(tmp_path, module_class, folder, files):
    with pytest.raises(DataError) as error:
        module_class(root=str(tmp_path)).setup()
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / folder) in message and f"contains {folder}" in message
    assert "download: true" in message
    assert all(file in message for file in files)


def test_missing_files_are_listed_but_present_ones_are_not(tmp_path):
    raw = write_fake_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte;"):
        MNIST(root=str(tmp_path)).build()


def test_default_transforms_flip_clothes_and_cifar_but_not_digits():
    def flips(module) -> bool:
        return any(isinstance(t, v2.RandomHorizontalFlip) for t in module.transform(train=True).transforms)

    assert not flips(MNIST()) and flips(FashionMNIST()) and flips(CIFAR10()) and flips(CIFAR100())
    crops = [t for t in CIFAR10().transform(train=True).transforms if isinstance(t, v2.RandomCrop)]
    assert len(crops) == 1 and crops[0].padding == [4, 4, 4, 4]
    assert not any(isinstance(t, v2.RandomCrop) for t in CIFAR10().transform(train=False).transforms)


def test_module_attributes_describe_the_images():
    assert (MNIST.num_channels, MNIST.default_preprocessing.image_size) == (1, 28)
    assert (CIFAR100.num_channels, CIFAR100.default_preprocessing.image_size) == (3, 32)
    batch = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert CIFAR10().transform(train=True)(batch).shape == (3, 32, 32)
