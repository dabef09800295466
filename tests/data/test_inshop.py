"""In-Shop Clothes read from a generated copy of its published layout: roles, split, box crops, bad input."""

import numpy as np
import pytest

from lightning_dml.cli import DMLCLI
from lightning_dml.data import InShop
from lightning_dml.errors import DataError
from tests.data.tree_builders import (
    check_config_matches_backbone,
    inshop_tree,
    recolour,
    spread,
    validate_args,
)
from tests.reference import assert_logged, reference_metrics

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")

TINY = {
    1: {"train": 3},
    2: {"train": 2},
    7: {"query": 2, "gallery": 2},
    9: {"query": 1, "gallery": 2},
}


def partition_rows(root) -> list[list[str]]:
    """Independent reading of the partition file: its rows after the count and the header."""
    return [line.split() for line in (root / "Eval/list_eval_partition.txt").read_text().splitlines()[2:]]


def test_train_items_and_one_test_set_with_disjoint_query_and_gallery_roles(tmp_path):
    inshop_tree(tmp_path, TINY)
    train, test = InShop(root=str(tmp_path), allow_partial=True).build()
    assert train.class_ids.tolist() == [1, 1, 1, 2, 2] and test.class_ids.tolist() == [7] * 4 + [9] * 3
    rows = {str(tmp_path / name): (int(item[3:]), status) for name, item, status in partition_rows(tmp_path)}
    for i in range(len(test)):
        item, status = rows[test.describe(i)]
        assert item == int(test.class_ids[i])
        assert (bool(test.is_query[i]), bool(test.is_gallery[i])) == (status == "query", status == "gallery")
    assert test.is_query.sum() == 3 and test.is_gallery.sum() == 4


def test_full_counts_need_no_flag_and_the_summary_states_the_protocol(tmp_path):
    train = {item: {"train": n} for item, n in spread(25882, range(1, 3998)).items()}
    query = spread(14218, range(3998, 7983))
    gallery = spread(12612, range(3998, 7983))
    inshop_tree(
        tmp_path, train | {i: {"query": query[i], "gallery": gallery[i]} for i in query}, share_files=True
    )
    module = InShop(root=str(tmp_path), validation=["test"])
    module.setup()
    assert (len(module.train_set), module.train_set.num_classes) == (25882, 3997)
    assert (int(module.test_set.is_query.sum()), int(module.test_set.is_gallery.sum())) == (14218, 12612)
    summary = module.summary()
    assert "counts match the published dataset" in summary
    assert "14,218 queries searched among 12,612 gallery images" in summary


def test_images_under_Img_and_boxes_crop_to_the_white_half(tmp_path):
    inshop_tree(tmp_path, TINY)
    (tmp_path / "Img").mkdir()
    (tmp_path / "img").rename(tmp_path / "Img/img")  # as unzipped from Img/img.zip
    train, _ = InShop(root=str(tmp_path), allow_partial=True, crop_boxes=True).build()
    image = np.asarray(train.source.load(0))
    assert image.shape == (20, 12, 3) and image.mean() > 240


def test_lightning_dml_validate_searches_queries_in_the_gallery(tmp_path):
    recolour(inshop_tree(tmp_path / "data", TINY))  # images of an item differ: retrieval can miss
    cli = DMLCLI(args=["validate", *validate_args("inshop", tmp_path)])
    val = cli.datamodule.val_sets["val"]
    assert val is cli.datamodule.test_set and val[0]["is_query"] and not val[0]["is_gallery"]
    assert (int(val.is_query.sum()), int(val.is_gallery.sum())) == (3, 4)  # the tree's queries and gallery
    expected = reference_metrics(cli.model, cli.datamodule.val_dataloader()[0], recall_at=(1, 10, 20, 30))
    assert_logged(cli.trainer.callback_metrics, "val", expected)


def test_item_in_train_and_query_is_refused(tmp_path):
    inshop_tree(tmp_path, TINY | {2: {"train": 2, "gallery": 1}})
    with pytest.raises(DataError, match=r"1 items are both train and query/gallery \(id_00000002\)"):
        InShop(root=str(tmp_path), allow_partial=True).build()


def test_wrong_root_shows_the_expected_tree(tmp_path):
    with pytest.raises(
        DataError, match=r"list_eval_partition.txt not found .*\{Eval/list_eval_partition.txt"
    ):
        InShop(root=str(tmp_path)).build()


def test_missing_box_file_is_named(tmp_path):
    (inshop_tree(tmp_path, TINY) / "Anno/list_bbox_inshop.txt").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*list_bbox_inshop.txt"):
        InShop(root=str(tmp_path), allow_partial=True, crop_boxes=True).build()


def test_row_pointing_at_a_missing_image_names_the_line(tmp_path):
    (inshop_tree(tmp_path, TINY) / "img/WOMEN/Dresses/id_00000007/1_gallery.jpg").unlink()
    with pytest.raises(
        DataError, match=r"list_eval_partition.txt line 11: image file not found: .*1_gallery.jpg"
    ):
        InShop(root=str(tmp_path), allow_partial=True).build()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("id_00000009  query", "item9  query", r"line 12: item id 'item9' is not of the form id_<number>"),
        (
            "id_00000009  query",
            "id_00000009  probe",
            r"line 12: evaluation_status 'probe'; allowed: train, query",
        ),
        ("12\n", "13\n", r"line 1 announces 13 images but lists 12"),
    ],
)
def test_malformed_partition_rows_name_the_line(tmp_path, old, new, message):
    path = inshop_tree(tmp_path, TINY) / "Eval/list_eval_partition.txt"
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(DataError, match=message):
        InShop(root=str(tmp_path), allow_partial=True).build()


def test_corrupt_image_is_skipped_and_listed_on_request(tmp_path):
    corrupt = inshop_tree(tmp_path, TINY) / "img/WOMEN/Dresses/id_00000009/0_query.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a JPEG")
    module = InShop(root=str(tmp_path), allow_partial=True, skip_corrupt=True, validation=["test"])
    module.setup()
    assert module.skipped == [str(corrupt)] and int(module.test_set.is_query.sum()) == 2


def test_config_normalisation_is_the_backbones_pretrained_cfg():
    check_config_matches_backbone("inshop")
