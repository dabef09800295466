"""Undecodable image files in each file-based dataset's own layout: named when read, all listed by
``verify_images`` at setup, left out by ``skip_corrupt`` before the split checks."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from lightning_dml.data import CUB200, Cars196, ImageCSV, ImageFolder, InShop, StanfordOnlineProducts
from lightning_dml.data.image_files import decodes
from lightning_dml.errors import DataError
from tests.data.tree_builders import (
    cars_mat_tree,
    csv_tree,
    cub_tree,
    folder_tree,
    inshop_tree,
    sop_tree,
    truncate_jpeg,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")


@dataclass
class Tree:
    """A tiny dataset tree: its data module, its training and test image counts and two damaged files."""

    module: Callable
    train: int
    test: int
    damaged: tuple[Path, Path]  # a training image, truncated; a test image, replaced by a non-image


def cub(tmp: Path) -> Tree:
    folder = cub_tree(tmp, {1: 3, 2: 2, 101: 2, 150: 3}) / "images"
    damaged = folder / "001.Bird_1/Bird_1_0000.jpg", folder / "150.Bird_150/Bird_150_0002.jpg"
    return Tree(partial(CUB200, root=str(tmp), allow_partial=True), 5, 5, damaged)


def cars(tmp: Path) -> Tree:
    cars_mat_tree(tmp, {1: 3, 2: 2, 99: 2, 150: 3})  # car_ims/000001.jpg .. 000010.jpg in class order
    damaged = tmp / "car_ims/000001.jpg", tmp / "car_ims/000010.jpg"
    return Tree(partial(Cars196, root=str(tmp), allow_partial=True), 5, 5, damaged)


def sop(tmp: Path) -> Tree:
    folder = sop_tree(tmp, {1: 3, 2: 2, 11319: 2, 11400: 3})  # category<class % 12>_final/<class>_<k>.JPG
    damaged = folder / "category1_final/1_0.JPG", folder / "category0_final/11400_2.JPG"
    return Tree(partial(StanfordOnlineProducts, root=str(tmp), allow_partial=True), 5, 5, damaged)


def inshop(tmp: Path) -> Tree:
    items = {1: {"train": 3}, 2: {"train": 2}, 7: {"query": 2, "gallery": 2}, 9: {"query": 1, "gallery": 2}}
    folder = inshop_tree(tmp, items) / "img/WOMEN/Dresses"
    damaged = folder / "id_00000001/0_train.jpg", folder / "id_00000007/1_gallery.jpg"
    return Tree(partial(InShop, root=str(tmp), allow_partial=True), 5, 7, damaged)


def image_folder(tmp: Path) -> Tree:
    folder_tree(tmp, {"a": 3, "b": 2, "c": 2, "d": 3})  # a, b (the first half) train
    return Tree(partial(ImageFolder, root=str(tmp)), 5, 5, (tmp / "a/0.jpg", tmp / "d/2.jpg"))


def image_csv(tmp: Path) -> Tree:
    path = csv_tree(tmp, {"train": {1: 3, 2: 2}, "test": {3: 2, 4: 3}})
    damaged = tmp / "images/train/1_0.jpg", tmp / "images/test/4_2.jpg"
    return Tree(partial(ImageCSV, path=str(path)), 5, 5, damaged)


TREES = {f.__name__: f for f in (cub, cars, sop, inshop, image_folder, image_csv)}


def damaged_tree(tmp: Path, name: str) -> Tree:
    """The tree ``name`` with its training image truncated and its test image replaced by text."""
    tree = TREES[name](tmp)
    truncate_jpeg(tree.damaged[0])
    tree.damaged[1].write_bytes(b"not an image")
    return tree


def paths_of(dataset) -> list[str]:
    return [dataset.describe(i) for i in range(len(dataset))]


def test_a_truncated_jpeg_passes_pil_verify_but_not_the_decoding_check(tmp_path):
    path = tmp_path / "x.jpg"
    truncate_jpeg(path)
    with Image.open(path) as image:
        image.verify()  # no error: verify() reads the headers only
    assert not decodes(str(path))


@pytest.mark.parametrize("name", TREES)
def test_without_a_check_reading_an_undecodable_image_names_it(tmp_path, name):
    tree = damaged_tree(tmp_path, name)
    module = tree.module(validation=["test"])
    module.setup()  # nothing decoded yet
    for path, dataset in zip(tree.damaged, (module.train_set, module.test_set), strict=True):
        position = paths_of(dataset).index(str(path))
        with pytest.raises(
            DataError, match=rf"cannot decode image {re.escape(str(path))}: .*skip_corrupt: true"
        ):
            dataset[position]


@pytest.mark.parametrize("name", TREES)
def test_verify_images_lists_every_undecodable_file_at_setup(tmp_path, name):
    tree = damaged_tree(tmp_path, name)
    module = tree.module(validation=["test"], verify_images=True)
    with pytest.raises(DataError) as error:
        module.setup("fit")
    message = str(error.value)
    expected = ", ".join(sorted(str(path) for path in tree.damaged))
    assert message.startswith(f"2 undecodable image files: {expected}; repair or remove them")
    assert message.endswith("set skip_corrupt: true to leave them out") and "\n" not in message
    assert module.train_set is None  # stopped before any set (and so any step) existed


@pytest.mark.parametrize("name", TREES)
def test_skip_corrupt_leaves_them_out_and_warns_once(tmp_path, name):
    tree = damaged_tree(tmp_path, name)
    module = tree.module(validation=["test"], skip_corrupt=True)
    with pytest.warns(UserWarning, match="skip_corrupt: left out 2 undecodable image files") as warned:
        module.setup()
    assert len([w for w in warned if "skip_corrupt" in str(w.message)]) == 1
    assert (len(module.train_set), len(module.test_set)) == (tree.train - 1, tree.test - 1)
    assert module.skipped == sorted(str(path) for path in tree.damaged)
    kept = paths_of(module.train_set) + paths_of(module.test_set)
    assert all(decodes(path) for path in kept)
    assert "skipped 2 undecodable images" in module.summary()


def test_inshop_roles_follow_the_kept_images(tmp_path):
    tree = damaged_tree(tmp_path, "inshop")  # the damaged test image is a gallery image of item 7
    module = tree.module(validation=["test"], skip_corrupt=True)
    with pytest.warns(UserWarning, match="skip_corrupt"):
        module.setup()
    test = module.test_set
    assert (int(test.is_query.sum()), int(test.is_gallery.sum())) == (3, 3)
    roles = {Path(path).name: bool(q) for path, q in zip(paths_of(test), test.is_query, strict=True)}
    assert all(is_query == name.endswith("_query.jpg") for name, is_query in roles.items())


def test_split_checks_see_the_sets_without_the_skipped_images(tmp_path):
    folder_tree(tmp_path, {"a": 2, "b": 2, "c": 2, "d": 2})
    for path in (tmp_path / "d/0.jpg", tmp_path / "d/1.jpg"):
        path.write_bytes(b"not an image")
    module = ImageFolder(root=str(tmp_path), validation=["test"], skip_corrupt=True)
    with (
        pytest.warns(UserWarning, match="skip_corrupt"),
        pytest.raises(DataError, match="holds only class 2"),
    ):
        module.setup()


def test_a_long_list_names_the_first_files_and_writes_all_to_a_file(tmp_path):
    folder_tree(tmp_path, {"a": 6, "b": 6, "c": 2, "d": 2})
    damaged = sorted(str(tmp_path / name / f"{k}.jpg") for name in "ab" for k in range(6))
    for path in damaged:
        Path(path).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"^12 undecodable image files: ") as error:
        ImageFolder(root=str(tmp_path), validation=["test"], verify_images=True).setup()
    listing = re.search(r"all 12 listed in (\S+)\)", str(error.value))
    assert str(error.value).count(str(tmp_path)) == 10 and listing is not None
    assert Path(listing.group(1)).read_text().split() == damaged


def test_a_clean_tree_passes_verification_and_the_summary_says_so(tmp_path):
    folder_tree(tmp_path, {"a": 2, "b": 2, "c": 2, "d": 2})
    module = ImageFolder(root=str(tmp_path), validation=["test"], verify_images=True)
    module.setup()
    assert (len(module.train_set), len(module.test_set)) == (4, 4)
    assert "decoded 8 image files at setup: all decode" in module.summary()
