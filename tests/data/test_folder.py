from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_dml.data import ImageFolder
from lightning_dml.data.transforms import IMAGE_FILES, IMAGENET_MEAN, IMAGENET_STD, Transforms
from lightning_dml.errors import DataError


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> Path:
    """Write a real single-colour image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_tree(root: Path, images_per_class: dict[str, int]) -> None:
    """Write ``root/<class>/<i>.jpg|png``, alternating JPEG and PNG."""
    for name, count in images_per_class.items():
        for i in range(count):
            write_image(root / name / f"{i}.{'jpg' if i % 2 else 'png'}", (10 * i, 100, 200))


CLASSES = {"b_dog": 4, "a_cat": 3, "d_fox": 2, "c_eel": 5}


def class_names(dataset) -> set[str]:
    return {Path(dataset.describe(i)).parent.name for i in range(len(dataset))}


def test_classes_sorted_by_name_and_first_half_trains(tmp_path):
    write_tree(tmp_path, CLASSES)
    train, test = ImageFolder(root=str(tmp_path)).build()
    assert class_names(train) == {"a_cat", "b_dog"} and class_names(test) == {"c_eel", "d_fox"}
    assert train.class_ids.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert test.class_ids.tolist() == [2] * 5 + [3] * 2


def test_train_classes_pick_the_training_folders(tmp_path):
    write_tree(tmp_path, CLASSES)
    train, test = ImageFolder(root=str(tmp_path), train_classes=["c_eel", "a_cat"]).build()
    assert class_names(train) == {"a_cat", "c_eel"} and train.class_ids.unique().tolist() == [0, 2]
    assert class_names(test) == {"b_dog", "d_fox"} and test.class_ids.unique().tolist() == [1, 3]


def test_closed_set_holds_out_test_fraction_of_each_class(tmp_path):
    write_tree(tmp_path, {"a": 4, "b": 6})
    train, test = ImageFolder(root=str(tmp_path), protocol="closed_set", test_fraction=0.5).build()
    assert test.class_ids.bincount().tolist() == [2, 3] and train.class_ids.bincount().tolist() == [2, 3]
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(10))


def test_extensions_filter_files_and_subfolders_count(tmp_path):
    write_tree(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "nested" / "deep.JPG", (0, 0, 0))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    train, test = ImageFolder(root=str(tmp_path)).build()
    assert len(train) == 3 and len(test) == 2
    train, test = ImageFolder(root=str(tmp_path), extensions=["png"]).build()
    assert {Path(train.describe(i)).suffix for i in range(len(train))} == {".png"}
    assert len(train) == len(test) == 1


def test_items_have_image_size_and_contiguous_labels(tmp_path):
    write_tree(tmp_path, CLASSES)
    module = ImageFolder(
        root=str(tmp_path),
        train_classes=["b_dog", "d_fox"],
        transforms=Transforms(image_size=16),
        validation=["test"],
    )
    module.setup()
    item = module.train_set[5]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert module.train_set.class_ids.unique().tolist() == [1, 3]
    assert module.train_set.labels.unique().tolist() == [0, 1] and item["label"] == 1
    assert module.num_channels == 3 and module.preprocessing.image_size == 16


def file_transform(image_size: int, train: bool):
    """The image-file datasets' default transform at ``image_size``."""
    return Transforms(image_size=image_size).resolve(IMAGE_FILES).transform(train)


def test_eval_transform_normalises_with_imagenet_statistics(tmp_path):
    path = write_image(tmp_path / "x.png", (255, 128, 0), size=(30, 18))
    image = file_transform(8, train=False)(Image.open(path))
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert image.shape == (3, 8, 8)
    torch.testing.assert_close(image, torch.tensor(expected).view(3, 1, 1).expand(3, 8, 8))
    assert file_transform(8, train=True)(Image.open(path)).shape == (3, 8, 8)


def test_eval_transform_keeps_the_centre(tmp_path):
    image = Image.new("RGB", (80, 20), (0, 0, 0))
    image.paste((255, 255, 255), (30, 0, 50, 20))  # a white band over the middle quarter
    cropped = file_transform(10, train=False)(image)
    assert cropped.shape == (3, 10, 10)
    assert (cropped[0] > 1).all()  # only the white band (edges softened by resizing) survives the crop


def test_missing_root_shows_the_expected_layout(tmp_path):
    with pytest.raises(
        DataError, match=r"not found: .*missing; expected .*missing/<class_name>/<image>\.jpg"
    ):
        ImageFolder(root=str(tmp_path / "missing")).build()


def test_root_without_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="no images"):
        ImageFolder(root=str(tmp_path)).build()


def test_class_folder_without_images_is_named(tmp_path):
    write_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"without images .*: empty_class;"):
        ImageFolder(root=str(tmp_path)).build()


def test_unknown_train_classes_are_named(tmp_path):
    write_tree(tmp_path, CLASSES)
    with pytest.raises(
        DataError,
        match=r"train_classes .* unknown classes zebra; the valid classes are a_cat, b_dog, c_eel, d_fox$",
    ):
        ImageFolder(root=str(tmp_path), train_classes=["a_cat", "zebra"]).build()
    with pytest.raises(
        DataError, match=r"train_classes .* lists a_cat more than once; list each class once$"
    ):
        ImageFolder(root=str(tmp_path), train_classes=["a_cat", "b_dog", "a_cat"]).build()


def test_train_classes_must_leave_test_classes(tmp_path):
    write_tree(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match="picks 2 of the 2 classes"):
        ImageFolder(root=str(tmp_path), train_classes=["a", "b"]).build()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_raises_data_error_naming_it_when_read(tmp_path, damage):
    write_tree(tmp_path, {"a": 2, "b": 2})
    bad = tmp_path / "a" / "0.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(bad)
    data = bad.read_bytes()
    bad.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    train, _ = ImageFolder(root=str(tmp_path), extensions=["jpg", "png"]).build()
    position = [train.describe(i) for i in range(len(train))].index(str(bad))
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        train[position]
