"""CUB-200-2011 read from a generated copy of its published layout, its split, transforms and bad input."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_dml.cli import DMLCLI
from lightning_dml.data import CUB200, Transforms
from lightning_dml.data import cub as cub_module
from lightning_dml.errors import DataError
from tests.data.tree_builders import check_config_matches_backbone, cub_tree, recolour, spread, validate_args
from tests.reference import assert_logged, reference_metrics

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")

TINY = {1: 3, 2: 2, 100: 2, 101: 2, 150: 3, 200: 2}
FULL = spread(5864, range(1, 101)) | spread(5924, range(101, 201))


def tiny(tmp_path: Path, **kwargs) -> CUB200:
    """A CUB200 module on the tiny tree (a partial copy, hence ``allow_partial``)."""
    cub_tree(tmp_path, TINY)
    return CUB200(root=str(tmp_path), allow_partial=True, validation=["test"], **kwargs)


def listed_classes(folder: Path) -> dict[str, int]:
    """Independent reading of the lists: image path -> class id, joined by image id."""
    paths = dict(line.split() for line in (folder / "images.txt").read_text().splitlines())
    labels = dict(line.split() for line in (folder / "image_class_labels.txt").read_text().splitlines())
    return {paths[i]: int(labels[i]) for i in paths}


def test_classes_1_to_100_train_and_101_to_200_test(tmp_path):
    train, test = tiny(tmp_path).build()
    assert train.class_ids.tolist() == [1, 1, 1, 2, 2, 100, 100]
    assert test.class_ids.tolist() == [101, 101, 150, 150, 150, 200, 200]
    expected = listed_classes(tmp_path / "CUB_200_2011")
    for dataset in (train, test):
        for i in range(len(dataset)):
            relative = Path(dataset.describe(i)).relative_to(tmp_path / "CUB_200_2011" / "images")
            assert expected[str(relative)] == int(dataset.class_ids[i])


def test_root_may_be_the_dataset_folder_itself(tmp_path):
    cub_tree(tmp_path, TINY)
    train, _ = CUB200(root=str(tmp_path / "CUB_200_2011"), allow_partial=True).build()
    assert len(train) == 7


def test_full_class_range_with_published_counts_needs_no_flag(tmp_path):
    cub_tree(tmp_path, FULL, share_files=True)
    module = CUB200(root=str(tmp_path), validation=["test"])
    module.setup()
    assert (len(module.train_set), module.train_set.num_classes) == (5864, 100)
    assert module.train_set.class_ids.unique().tolist() == list(range(1, 101))
    assert (
        module.test_set.class_ids.unique().tolist() == list(range(101, 201)) and len(module.test_set) == 5924
    )
    summary = module.summary()
    assert "classes 1–100 train, 101–200 test" in summary and "counts match the published dataset" in summary


def test_partial_copy_is_refused_without_the_flag_and_logged_with_it(tmp_path):
    cub_tree(tmp_path, TINY)
    with pytest.raises(
        DataError, match=r"train 7 images / 3 classes \(published 5,864 / 100\).*allow_partial"
    ):
        CUB200(root=str(tmp_path)).build()
    module = CUB200(root=str(tmp_path), allow_partial=True, validation=["test"])
    with pytest.warns(UserWarning, match="PARTIAL COPY"):
        module.setup()
    assert "PARTIAL COPY (allow_partial)" in module.summary()


def test_box_crop_keeps_the_white_half(tmp_path):
    module = tiny(tmp_path, crop_boxes=True)
    train, _ = module.build()
    image = train.source.load(0)
    assert image.size == (12, 20)
    assert torch.as_tensor(list(image.getdata())).float().mean() > 240  # the builder's box is the white half
    assert tiny(tmp_path / "plain").build()[0].source.load(0).size == (24, 20)


def test_transforms_follow_the_given_size_and_normalisation(tmp_path):
    module = tiny(
        tmp_path,
        crop_boxes=True,
        transforms=Transforms(image_size=8, resize=10, mean=(0.5, 0.5, 0.5), std=(0.25,) * 3),
    )
    module.setup()
    evaluated = module.test_set[0]["image"]
    assert evaluated.shape == (3, 8, 8) and module.train_set[0]["image"].shape == (3, 8, 8)
    white = (1.0 - 0.5) / 0.25  # a white pixel after normalisation by mean 0.5, std 0.25
    assert torch.allclose(evaluated, torch.full_like(evaluated, white), atol=0.2)


def test_download_fetches_the_caltech_archive_when_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(url: str, root: str, md5: str) -> None:
        calls.append((url, root, md5))
        cub_tree(Path(root), TINY)

    monkeypatch.setattr(cub_module, "download_and_extract_archive", fake_download)
    train, _ = CUB200(root=str(tmp_path), download=True, allow_partial=True).build()
    assert calls == [(cub_module.URL, str(tmp_path), cub_module.MD5)] and len(train) == 7
    CUB200(root=str(tmp_path), download=True, allow_partial=True).build()
    assert len(calls) == 1  # present: not downloaded again


def test_wrong_root_shows_the_expected_tree(tmp_path):
    with pytest.raises(
        DataError, match=r"images.txt not found in .*expected the tree CUB_200_2011/\{images.txt"
    ):
        CUB200(root=str(tmp_path)).build()


def test_missing_annotation_file_is_named(tmp_path):
    (cub_tree(tmp_path, TINY) / "image_class_labels.txt").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*image_class_labels.txt"):
        CUB200(root=str(tmp_path), allow_partial=True).build()


def test_row_pointing_at_a_missing_image_names_the_line(tmp_path):
    folder = cub_tree(tmp_path, TINY)
    (folder / "images/101.Bird_101/Bird_101_0001.jpg").unlink()
    with pytest.raises(DataError, match=r"images.txt line 9: image file not found: .*Bird_101_0001.jpg"):
        CUB200(root=str(tmp_path), allow_partial=True).build()


def test_class_id_out_of_range_names_the_line(tmp_path):
    labels = cub_tree(tmp_path, TINY) / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("13 200", "13 201"))
    with pytest.raises(DataError, match=r"image_class_labels.txt line 13: class id 201 is outside 1–200"):
        CUB200(root=str(tmp_path), allow_partial=True).build()


def test_corrupt_image_is_named_or_skipped_and_listed_on_request(tmp_path):
    corrupt = cub_tree(tmp_path, TINY) / "images/150.Bird_150/Bird_150_0001.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated JPEG
    module = CUB200(root=str(tmp_path), allow_partial=True, validation=["test"])
    module.setup()
    with pytest.raises(DataError, match=rf"cannot decode image {corrupt}.*skip_corrupt: true"):
        [module.test_set[i] for i in range(len(module.test_set))]
    skipping = CUB200(root=str(tmp_path), allow_partial=True, skip_corrupt=True, validation=["test"])
    skipping.setup()
    assert skipping.skipped == [str(corrupt)] and len(skipping.test_set) == len(module.test_set) - 1
    assert "skipped 1 undecodable images" in skipping.summary()
    Image.open(skipping.test_set.describe(2)).load()  # the remaining images decode


def test_config_normalisation_is_the_backbones_pretrained_cfg():
    check_config_matches_backbone("cub")


def test_lightning_dml_validate_logs_the_reference_metrics_of_the_test_classes(tmp_path):
    recolour(cub_tree(tmp_path / "data", TINY) / "images")  # images of a class differ: retrieval can miss
    cli = DMLCLI(args=["validate", *validate_args("cub", tmp_path)])
    val = cli.datamodule.val_sets["val"]
    assert val.class_ids.tolist() == [101, 101, 150, 150, 150, 200, 200]  # the tree's test classes
    expected = reference_metrics(cli.model, cli.datamodule.val_dataloader()[0])
    assert_logged(cli.trainer.callback_metrics, "val", expected)
