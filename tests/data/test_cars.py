"""Cars196 read from generated copies of its three published layouts, its split, box crops and bad input."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from lightning_dml.cli import DMLCLI
from lightning_dml.data import Cars196
from lightning_dml.errors import DataError
from tests.data.tree_builders import (
    cars_devkit_tree,
    cars_folder_tree,
    cars_mat_tree,
    check_config_matches_backbone,
    recolour,
    spread,
    validate_args,
)
from tests.reference import assert_logged, reference_metrics

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")

TINY = {1: 3, 98: 2, 99: 2, 196: 2}
LAYOUTS = {"annos_mat": cars_mat_tree, "devkit": cars_devkit_tree, "class_folders": cars_folder_tree}


def class_counts(dataset) -> dict[int, int]:
    return dict(Counter(dataset.class_ids.tolist()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_classes_1_to_98_for_training(tmp_path, layout):
    LAYOUTS[layout](tmp_path, TINY)
    train, test = Cars196(root=str(tmp_path), allow_partial=True).build()
    assert class_counts(train) == {1: 3, 98: 2} and class_counts(test) == {99: 2, 196: 2}
    assert all(Path(train.describe(i)).is_file() for i in range(len(train)))


def test_annos_mat_rows_follow_the_file(tmp_path):
    cars_mat_tree(tmp_path, TINY)
    records = scipy.io.loadmat(tmp_path / "cars_annos.mat")["annotations"][0]  # independent reading
    expected = {str(r["relative_im_path"][0]): int(r["class"][0, 0]) for r in records}
    train, test = Cars196(root=str(tmp_path), allow_partial=True).build()
    found = {
        str(Path(d.describe(i)).relative_to(tmp_path)): int(d.class_ids[i])
        for d in (train, test)
        for i in range(len(d))
    }
    assert found == expected


def test_full_class_range_with_published_counts_needs_no_flag(tmp_path):
    cars_folder_tree(tmp_path, spread(8054, range(1, 99)) | spread(8131, range(99, 197)), share_files=True)
    module = Cars196(root=str(tmp_path), validation=["test"])
    module.setup()
    assert (len(module.train_set), len(module.test_set)) == (8054, 8131)
    assert module.train_set.class_ids.unique().tolist() == list(range(1, 99))
    assert module.test_set.class_ids.unique().tolist() == list(range(99, 197))
    assert "classes 1–98 train, 99–196 test" in module.summary()
    with pytest.raises(DataError, match=r"test 2 images / 1 classes \(published 8,131 / 98\)") as error:
        Cars196(
            root=str(cars_folder_tree(tmp_path / "partial", spread(8054, range(1, 99)) | {99: 2}))
        ).build()
    assert "published 8,054" not in str(error.value)  # only the part that differs is reported


def test_box_crop_uses_one_based_inclusive_corners(tmp_path):
    cars_devkit_tree(tmp_path, TINY)
    train, _ = Cars196(root=str(tmp_path), allow_partial=True, crop_boxes=True).build()
    image = np.asarray(train.source.load(0))
    assert image.shape == (20, 12, 3) and image.mean() > 240  # x 13..24 (1-based) is the white right half


def test_wrong_root_shows_the_three_expected_trees(tmp_path):
    with pytest.raises(
        DataError, match=r"no Stanford Cars layout found .*cars_annos.mat, car_ims.*devkit.*anno_train"
    ):
        Cars196(root=str(tmp_path)).build()


def test_missing_annotation_file_is_named(tmp_path):
    (cars_devkit_tree(tmp_path, TINY) / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*cars_test_annos_withlabels.mat"):
        Cars196(root=str(tmp_path), allow_partial=True).build()


def test_unreadable_mat_file_is_named(tmp_path):
    (cars_mat_tree(tmp_path, TINY) / "cars_annos.mat").write_bytes(b"not a MATLAB file at all")
    with pytest.raises(DataError, match=r"cannot read .*cars_annos.mat as a MATLAB file"):
        Cars196(root=str(tmp_path), allow_partial=True).build()


def test_row_pointing_at_a_missing_image_names_the_annotation(tmp_path):
    (cars_mat_tree(tmp_path, TINY) / "car_ims/000002.jpg").unlink()
    with pytest.raises(DataError, match=r"cars_annos.mat annotation 2: image file not found: .*000002.jpg"):
        Cars196(root=str(tmp_path), allow_partial=True).build()
    (cars_folder_tree(tmp_path / "folders", TINY) / "car_data/car_data/test/Car 99/00007.jpg").unlink()
    with pytest.raises(DataError, match=r"anno_test.csv line 3: image file not found: .*00007.jpg"):
        Cars196(root=str(tmp_path / "folders"), allow_partial=True).build()


def test_class_id_out_of_range_names_the_line(tmp_path):
    annotations = cars_folder_tree(tmp_path, TINY) / "anno_test.csv"
    lines = annotations.read_text().splitlines()
    annotations.write_text("\n".join([*lines[:-1], lines[-1].replace(",196", ",197")]) + "\n")
    with pytest.raises(DataError, match=r"anno_test.csv line 4: class id 197 is outside 1–196"):
        Cars196(root=str(tmp_path), allow_partial=True).build()


def test_config_normalisation_is_the_backbones_pretrained_cfg():
    check_config_matches_backbone("cars196")


def test_lightning_dml_validate_logs_the_reference_metrics_of_the_test_classes(tmp_path):
    recolour(cars_devkit_tree(tmp_path / "data", TINY))  # images of a class differ: retrieval can miss
    cli = DMLCLI(args=["validate", *validate_args("cars196", tmp_path)])
    assert class_counts(cli.datamodule.val_sets["val"]) == {99: 2, 196: 2}
    expected = reference_metrics(cli.model, cli.datamodule.val_dataloader()[0])
    assert_logged(cli.trainer.callback_metrics, "val", expected)
