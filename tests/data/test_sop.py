"""Stanford Online Products read from a generated copy of its published layout, its split and bad input."""

from collections import Counter

import pytest

from lightning_dml.cli import DMLCLI
from lightning_dml.data import StanfordOnlineProducts
from lightning_dml.errors import DataError
from tests.data.tree_builders import check_config_matches_backbone, sop_tree, spread, validate_args

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")

TINY = {1: 2, 5: 3, 11318: 2, 11319: 2, 22634: 3}


def test_train_and_test_files_give_the_split_and_super_classes(tmp_path):
    folder = sop_tree(tmp_path, TINY)
    train, test = StanfordOnlineProducts(root=str(tmp_path), allow_partial=True).build()
    assert dict(Counter(train.class_ids.tolist())) == {1: 2, 5: 3, 11318: 2}
    assert dict(Counter(test.class_ids.tolist())) == {11319: 2, 22634: 3}
    rows = [
        line.split()
        for part in ("train", "test")
        for line in (folder / f"Ebay_{part}.txt").read_text().splitlines()[1:]
    ]
    expected = {folder / path: (int(c), int(s)) for _, c, s, path in rows}  # independent reading
    super_classes = train.source.metadata["super_class"]
    for dataset in (train, test):
        for i, index in enumerate(dataset.indices.tolist()):
            assert expected[train.source.paths[index]] == (
                int(dataset.class_ids[i]),
                int(super_classes[index]),
            )


def test_root_may_be_the_dataset_folder_itself(tmp_path):
    folder = sop_tree(tmp_path, TINY)
    train, _ = StanfordOnlineProducts(root=str(folder), allow_partial=True).build()
    assert len(train) == 7


def test_full_class_range_with_published_counts_needs_no_flag(tmp_path):
    sop_tree(tmp_path, spread(59551, range(1, 11319)) | spread(60502, range(11319, 22635)), share_files=True)
    module = StanfordOnlineProducts(root=str(tmp_path), validation=["test"])
    module.setup()
    assert (len(module.train_set), module.train_set.num_classes) == (59551, 11318)
    assert (len(module.test_set), module.test_set.num_classes) == (60502, 11316)
    assert int(module.train_set.class_ids.max()) == 11318 and int(module.test_set.class_ids.min()) == 11319
    assert "counts match the published dataset" in module.summary()


def test_duplicate_images_stay_separate_items_and_find_each_other(tmp_path):
    sop_tree(tmp_path / "data", TINY, share_files=True)  # each super-class's rows share one file: duplicates
    cli = DMLCLI(args=["validate", *validate_args("sop", tmp_path)])
    val = cli.datamodule.val_sets["val"]
    assert len(val) == 5 and len({val.describe(i) for i in range(len(val))}) == 2
    assert [val[i]["index"] for i in range(len(val))] == [0, 1, 2, 3, 4]
    # Identical images embed identically; the query itself is excluded by index, so its duplicate is found.
    assert float(cli.trainer.callback_metrics["val/recall@1"]) == 1.0


def test_wrong_root_shows_the_expected_tree(tmp_path):
    with pytest.raises(
        DataError, match=r"Ebay_train.txt not found .*Stanford_Online_Products/\{Ebay_train.txt"
    ):
        StanfordOnlineProducts(root=str(tmp_path)).build()


def test_missing_annotation_file_is_named(tmp_path):
    (sop_tree(tmp_path, TINY) / "Ebay_test.txt").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*Ebay_test.txt"):
        StanfordOnlineProducts(root=str(tmp_path), allow_partial=True).build()


def test_row_pointing_at_a_missing_image_names_the_line(tmp_path):
    (sop_tree(tmp_path, TINY) / "category5_final/5_1.JPG").unlink()
    with pytest.raises(DataError, match=r"Ebay_train.txt line 5: image file not found: .*5_1.JPG"):
        StanfordOnlineProducts(root=str(tmp_path), allow_partial=True).build()


@pytest.mark.parametrize(
    ("part", "old", "new", "message"),
    [
        ("train", " 11318 ", " 11319 ", r"Ebay_train.txt line 7: class id 11319 is outside 1–11318"),
        ("test", " 22634 ", " 22635 ", r"Ebay_test.txt line 4: class id 22635 is outside 11319–22634"),
        ("test", " 11319 ", " x ", r"Ebay_test.txt line 2: class id 'x' is not an integer"),
    ],
)
def test_class_id_out_of_range_names_the_line(tmp_path, part, old, new, message):
    path = sop_tree(tmp_path, TINY) / f"Ebay_{part}.txt"
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(DataError, match=message):
        StanfordOnlineProducts(root=str(tmp_path), allow_partial=True).build()


def test_config_normalisation_is_the_backbones_pretrained_cfg():
    check_config_matches_backbone("sop")
