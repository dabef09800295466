"""Tiny copies of the four retrieval benchmarks in their exact published layouts, with real JPEG files, and
trees for ImageFolder and ImageCSV.

Each builder takes the images per class id (``{class_id: count}``). With ``share_files`` the rows share a few
image files (one per class for CUB and Cars, per super-class for SOP, per status for In-Shop), so annotation
files of the full datasets' size stay quick to write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import timm
from PIL import Image

from tests.conftest import REPO

CAR_BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> None:
    """Write a real JPEG whose colour depends on ``seed`` (left half and right half differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    image.paste((255, 255, 255), (size[0] // 2, 0, size[0], size[1]))
    image.save(path, "JPEG")


def recolour(folder: Path) -> None:
    """Give every JPEG under ``folder`` a colour of its own, so that the images of a class differ."""
    for seed, path in enumerate(sorted(folder.rglob("*.jpg")), 1):
        write_jpeg(path, seed)


def spread(total: int, class_ids: range) -> dict[int, int]:
    """Return ``total`` images shared as evenly as possible among ``class_ids``."""
    base, extra = divmod(total, len(class_ids))
    return {c: base + (i < extra) for i, c in enumerate(class_ids)}


def rows_of(counts: dict[int, int]) -> list[tuple[int, int]]:
    """Return ``(class_id, k)`` for the k-th image of each class, classes in the given order."""
    return [(c, k) for c, n in counts.items() for k in range(n)]


def write_once(path: Path, seed: int, written: set[Path]) -> None:
    """Write the JPEG at ``path`` unless it was written already."""
    if path not in written:
        write_jpeg(path, seed)
        written.add(path)


def cub_tree(root: Path, counts: dict[int, int], share_files: bool = False) -> Path:
    """Write ``root/CUB_200_2011`` as published (lists, boxes, the unused classification split, images)."""
    folder = root / "CUB_200_2011"
    folder.mkdir(parents=True)
    (folder / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    images, labels, boxes, split, written = [], [], [], [], set()
    for image_id, (c, k) in enumerate(rows_of(counts), 1):
        name = f"{c:03d}.Bird_{c}/Bird_{c}_{0 if share_files else k:04d}.jpg"
        write_once(folder / "images" / name, c, written)
        images.append(f"{image_id} {name}\n")
        labels.append(f"{image_id} {c}\n")
        boxes.append(f"{image_id} 12.0 0.0 12.0 20.0\n")  # the white right half
        split.append(f"{image_id} {k % 2}\n")
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("bounding_boxes.txt", boxes),
        ("train_test_split.txt", split),
    ):
        (folder / name).write_text("".join(lines))
    return folder


def car_records(rows: list[tuple[str, int]], name_field: str, test_flag: bool = False) -> np.ndarray:
    """Return a MATLAB-style (1, N) struct array: file name, white-half box, ``class`` (and ``test``)."""
    fields = [name_field, *CAR_BOX_FIELDS, "class", *(["test"] if test_flag else [])]
    records = np.zeros((1, len(rows)), dtype=[(name, "O") for name in fields])
    for i, (name, c) in enumerate(rows):
        test = [np.uint8(i % 2)] if test_flag else []
        records[0, i] = (name, np.uint16(13), np.uint16(1), np.uint16(24), np.uint16(20), np.uint8(c), *test)
    return records


def cars_mat_tree(root: Path, counts: dict[int, int]) -> Path:
    """Write ``cars_annos.mat`` (``relative_im_path``, box, ``class``, ``test``) and ``car_ims/``."""
    rows = [(f"car_ims/{i:06d}.jpg", c) for i, (c, _) in enumerate(rows_of(counts), 1)]
    for path, c in rows:
        write_jpeg(root / path, c)
    class_names = np.array([[f"Car {c}" for c in range(1, 197)]], dtype=object)
    annotations = car_records(rows, "relative_im_path", test_flag=True)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


def cars_devkit_tree(root: Path, counts: dict[int, int]) -> Path:
    """Write the devkit layout: even images to ``cars_train``, odd ones to ``cars_test`` (all classes)."""
    (root / "devkit").mkdir(parents=True)
    class_names = np.array([[f"Car {c}" for c in range(1, 197)]], dtype=object)
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": class_names})
    for split, parity, target in (
        ("cars_train", 0, root / "devkit" / "cars_train_annos.mat"),
        ("cars_test", 1, root / "cars_test_annos_withlabels.mat"),
    ):
        rows = [(f"{i:05d}.jpg", c) for i, (c, k) in enumerate(rows_of(counts), 1) if k % 2 == parity]
        for name, c in rows:
            write_jpeg(root / split / name, c)
        scipy.io.savemat(target, {"annotations": car_records(rows, "fname")})
    return root


def cars_folder_tree(root: Path, counts: dict[int, int], share_files: bool = False) -> Path:
    """Write the class-folder copy: ``names.csv``, ``anno_{train,test}.csv``, ``car_data/car_data/``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "names.csv").write_text("".join(f"Car {c}\n" for c in range(1, 197)))
    written, lines = set(), {"train": [], "test": []}
    for i, (c, k) in enumerate(rows_of(counts), 1):
        split = ("train", "test")[k % 2]
        name = f"{c:05d}.jpg" if share_files else f"{i:05d}.jpg"
        write_once(root / "car_data" / "car_data" / split / f"Car {c}" / name, c, written)
        lines[split].append(f"{name},13,1,24,20,{c}\n")
    for split, rows in lines.items():
        (root / f"anno_{split}.csv").write_text("".join(rows))
    return root


def sop_tree(root: Path, counts: dict[int, int], share_files: bool = False) -> Path:
    """Write ``root/Stanford_Online_Products`` with ``Ebay_{train,test}.txt`` (classes ≤ 11,318 train)."""
    folder = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path\n"
    lines, written = {"train": [header], "test": [header]}, set()
    for image_id, (c, k) in enumerate(rows_of(counts), 1):
        name = f"category{c % 12}_final/" + ("shared.JPG" if share_files else f"{c}_{k}.JPG")
        write_once(folder / name, c, written)
        lines["train" if c <= 11318 else "test"].append(f"{image_id} {c} {c % 12 + 1} {name}\n")
    for part, rows in lines.items():
        (folder / f"Ebay_{part}.txt").write_text("".join(rows))
    return folder


def inshop_tree(root: Path, items: dict[int, dict[str, int]], share_files: bool = False) -> Path:
    """Write the In-Shop layout: ``Eval/list_eval_partition.txt``, ``Anno/list_bbox_inshop.txt``, ``img/``.

    ``items`` maps an item number to its images per status (``train`` / ``query`` / ``gallery``).
    """
    partition, boxes, written = [], [], set()
    for item, statuses in items.items():
        for status, count in statuses.items():
            for k in range(count):
                folder = "img/WOMEN/Dresses" + ("" if share_files else f"/id_{item:08d}")
                name = f"{folder}/{'shared' if share_files else k}_{status}.jpg"
                write_once(root / name, item, written)
                partition.append(f"{name}  id_{item:08d}  {status}\n")
                boxes.append(f"{name}  1  1  12  0  24  20\n")
    header = "image_name item_id evaluation_status\n"
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(f"{len(partition)}\n{header}{''.join(partition)}")
    (root / "Anno").mkdir()
    box_header = "image_name clothes_type pose_type x_1 y_1 x_2 y_2\n"
    (root / "Anno" / "list_bbox_inshop.txt").write_text(f"{len(boxes)}\n{box_header}{''.join(boxes)}")
    return root


def folder_tree(root: Path, counts: dict[str, int]) -> Path:
    """Write ImageFolder's layout ``root/<class_name>/<k>.jpg``, ``counts`` images per class name."""
    for seed, (name, k) in enumerate(rows_of(counts), 1):
        write_jpeg(root / name / f"{k}.jpg", seed)
    return root


def csv_tree(root: Path, splits: dict[str, dict[int, int]]) -> Path:
    """Write ``root/list.csv`` (``path,label,split``) and its images ``root/images/<split>/<class>_<k>.jpg``.

    ``splits`` maps ``train`` / ``test`` to the images per class id.
    """
    lines = ["path,label,split\n"]
    for split, counts in splits.items():
        for seed, (c, k) in enumerate(rows_of(counts), 1):
            name = f"images/{split}/{c}_{k}.jpg"
            write_jpeg(root / name, seed)
            lines.append(f"{name},{c},{split}\n")
    (root / "list.csv").write_text("".join(lines))
    return root / "list.csv"


def truncate_jpeg(path: Path) -> None:
    """Replace ``path`` with the first half of a noisy JPEG: headers intact (``Image.verify()`` passes), the
    pixel data cut short."""
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, "JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def validate_args(config: str, tmp_path: Path) -> list[str]:
    """``lightning-dml validate`` arguments running ``configs/resnet50_ms.yaml`` on
    ``configs/data/<config>.yaml`` in seconds on ``tmp_path/data``: a tiny timm test network without
    pretrained weights, 32 px crops, the partial-copy allowance."""
    return [
        *(
            "--config",
            str(REPO / f"configs/data/{config}.yaml"),
            "--config",
            str(REPO / "configs/resnet50_ms.yaml"),
        ),
        *("--data.init_args.root", str(tmp_path / "data")),
        *("--data.init_args.allow_partial", "true", "--data.init_args.num_workers", "0"),
        *("--data.init_args.transforms.image_size", "32", "--data.init_args.transforms.resize", "36"),
        *("--model.init_args.backbone.init_args.name", "test_resnet"),
        *("--model.init_args.backbone.init_args.pretrained", "false"),
        *("--trainer.accelerator", "cpu", "--trainer.precision", "32-true"),
        *(
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ),
    ]


def check_config_matches_backbone(config: str) -> None:
    """Assert that ``configs/resnet50_ms.yaml`` on a dataset config normalises and crops as its timm
    backbone's ``pretrained_cfg`` says, and that the run's config records that mean and std."""
    from lightning_dml.cli import DMLCLI

    offline = ["--model.init_args.backbone.init_args.pretrained", "false"]
    configs = [
        "--config",
        str(REPO / f"configs/data/{config}.yaml"),
        "--config",
        str(REPO / "configs/resnet50_ms.yaml"),
    ]
    cli = DMLCLI(args=[*configs, *offline], run=False)
    data, model = cli.datamodule, cli.model
    cfg = timm.get_pretrained_cfg(model.hparams["backbone"]["init_args"]["name"]).to_dict()
    preprocessing = data.preprocessing
    assert preprocessing.mean == cfg["mean"] and preprocessing.std == cfg["std"]
    transforms = cli.config.data.init_args.transforms
    assert (tuple(transforms.mean), tuple(transforms.std)) == (cfg["mean"], cfg["std"])
    assert preprocessing.image_size == cfg["input_size"][-1] and model.hparams["embedding_size"] == 512
