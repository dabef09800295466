from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_dml.data import ImageCSV, Transforms
from lightning_dml.errors import DataError


def write_image(path: Path, colour: tuple[int, int, int] = (50, 100, 150)) -> Path:
    """Write a real small single-colour image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 9), colour).save(path)
    return path


def write_csv(path: Path, header: str, rows: list[str], images: Path | None = None) -> str:
    """Write a CSV; with ``images``, also write each row's image file (its first cell, relative to it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    for row in rows if images is not None else []:
        write_image(images / row.split(",")[0])
    return str(path)


ROWS = [
    "a/0.jpg,3,train",
    "a/1.png,3,train",
    "b/0.jpg,7,train",
    "b/1.jpg,7,train",
    "c/0.png,1,test",
    "c/1.jpg,1,test",
    "d/0.jpg,9,test",
]


def test_rows_split_into_train_and_test_with_integer_labels_kept(tmp_path):
    csv = write_csv(tmp_path / "list.csv", "path,label,split", ROWS, images=tmp_path)
    train, test = ImageCSV(path=csv).build()
    assert train.class_ids.tolist() == [3, 3, 7, 7] and test.class_ids.tolist() == [1, 1, 9]
    assert train.describe(1) == str(tmp_path / "a/1.png") and test.describe(2) == str(tmp_path / "d/0.jpg")
    assert test.is_query is None and test.is_gallery is None


def test_paths_resolve_against_root_and_absolute_paths_stay(tmp_path):
    images = tmp_path / "images"
    absolute = write_image(tmp_path / "elsewhere" / "x.jpg")
    write_csv(tmp_path / "images.csv", "path,label,split", ROWS[:4], images=images)
    csv = write_csv(tmp_path / "lists" / "list.csv", "path,label,split", [*ROWS[:4], f"{absolute},2,test"])
    train, test = ImageCSV(path=csv, root=str(images)).build()
    assert train.describe(0) == str(images / "a/0.jpg") and test.describe(0) == str(absolute)


def test_string_labels_get_ids_in_sorted_order(tmp_path):
    rows = ["1.jpg,zebra,train", "2.jpg,ant,train", "3.jpg,moose,test", "4.jpg,zebra,test"]
    csv = write_csv(tmp_path / "list.csv", "path,label,split", rows, images=tmp_path)
    train, test = ImageCSV(path=csv, protocol="closed_set").build()
    assert train.class_ids.tolist() == [2, 0] and test.class_ids.tolist() == [1, 2]


def test_setup_gives_contiguous_training_labels_and_image_size(tmp_path):
    csv = write_csv(tmp_path / "list.csv", "path,label,split", ROWS, images=tmp_path)
    module = ImageCSV(path=csv, transforms=Transforms(image_size=8), validation=["test"])
    module.setup()
    assert module.train_set.labels.tolist() == [0, 0, 1, 1]
    item = module.test_set[2]
    assert item["image"].shape == (3, 8, 8) and item["label"] == 9 and item["index"] == 2


def test_query_and_gallery_columns_mark_the_test_roles(tmp_path):
    rows = [
        "a/0.jpg,3,train,,",
        "a/1.jpg,3,train,,",
        "c/0.jpg,1,test,1,0",
        "c/1.jpg,1,test,false,TRUE",
        "d/0.jpg,9,test,true,1",
    ]
    csv = write_csv(tmp_path / "list.csv", "path,label,split,is_query,is_gallery", rows, images=tmp_path)
    module = ImageCSV(path=csv, validation=["test"], transforms=Transforms(image_size=8))
    module.setup()
    assert module.test_set.is_query.tolist() == [True, False, True]
    assert module.test_set.is_gallery.tolist() == [False, True, True]
    assert (module.test_set[0]["is_query"], module.test_set[0]["is_gallery"]) == (True, False)


def test_a_missing_role_column_means_all_true(tmp_path):
    rows = ["a/0.jpg,3,train,", "c/0.jpg,1,test,0", "c/1.jpg,1,test,1"]
    csv = write_csv(tmp_path / "list.csv", "path,label,split,is_query", rows, images=tmp_path)
    _, test = ImageCSV(path=csv).build()
    assert test.is_query.tolist() == [False, True] and test.is_gallery.tolist() == [True, True]


def test_no_query_row_is_an_error(tmp_path):
    rows = ["a/0.jpg,3,train,", "c/0.jpg,1,test,0"]
    csv = write_csv(tmp_path / "list.csv", "path,label,split,is_query", rows, images=tmp_path)
    with pytest.raises(DataError, match="no test row has is_query true"):
        ImageCSV(path=csv).build()


def test_bad_flag_names_line_and_allowed_values(tmp_path):
    rows = ["a/0.jpg,3,train,", "c/0.jpg,1,test,1", "c/1.jpg,1,test,yes"]
    csv = write_csv(tmp_path / "list.csv", "path,label,split,is_gallery", rows, images=tmp_path)
    with pytest.raises(DataError, match="line 4: is_gallery is 'yes'; allowed values: 0, 1, true, false"):
        ImageCSV(path=csv).build()


def test_missing_columns_are_listed_with_the_required_ones(tmp_path):
    csv = write_csv(tmp_path / "list.csv", "path,class", ["a.jpg,1"])
    with pytest.raises(
        DataError, match="lacks the columns label, split; required: path,label,split"
    ) as error:
        ImageCSV(path=csv).build()
    assert "found: path,class" in str(error.value)


def test_unknown_split_names_line_value_and_allowed_values(tmp_path):
    rows = [*ROWS[:2], "b/0.jpg,7,val", *ROWS[3:]]
    csv = write_csv(tmp_path / "list.csv", "path,label,split", rows, images=tmp_path)
    with pytest.raises(DataError, match="line 4: split is 'val'; allowed values: train, test"):
        ImageCSV(path=csv).build()


def test_missing_image_file_is_found_at_build_with_line_and_path(tmp_path):
    csv = write_csv(tmp_path / "list.csv", "path,label,split", ROWS, images=tmp_path)
    (tmp_path / "b/1.jpg").unlink()
    with pytest.raises(DataError, match=f"line 5: image file not found: {tmp_path / 'b/1.jpg'};"):
        ImageCSV(path=csv).build()


def test_missing_csv_and_missing_split_are_errors(tmp_path):
    with pytest.raises(DataError, match="CSV file not found"):
        ImageCSV(path=str(tmp_path / "absent.csv")).build()
    csv = write_csv(tmp_path / "list.csv", "path,label,split", ROWS[:4], images=tmp_path)
    with pytest.raises(DataError, match="no rows with split test"):
        ImageCSV(path=csv).build()


def test_zero_shot_refuses_train_and_test_rows_sharing_classes(tmp_path):
    rows = [*ROWS, "e/0.jpg,3,test", "e/1.jpg,7,test"]
    csv = write_csv(tmp_path / "list.csv", "path,label,split", rows, images=tmp_path)
    with pytest.raises(DataError, match="share 2 class ids: 3, 7;"):
        ImageCSV(path=csv, validation=["test"]).setup()
    closed = ImageCSV(path=csv, validation=["test"], protocol="closed_set")
    closed.setup()
    assert torch.isin(closed.test_set.class_ids, closed.train_set.class_ids).sum() == 2


def test_corrupt_image_passes_build_and_fails_when_read(tmp_path):
    csv = write_csv(tmp_path / "list.csv", "path,label,split", ROWS, images=tmp_path)
    (tmp_path / "c/1.jpg").write_bytes(b"\xff\xd8 garbage")
    _, test = ImageCSV(path=csv).build()
    with pytest.raises(DataError, match=f"cannot decode image {tmp_path / 'c/1.jpg'}"):
        test[1]
