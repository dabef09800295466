"""The decoded-image cache: the same sets as the image files, the resized pixels, and its refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lightning_dml.cache_cli import main as cache_main
from lightning_dml.data import CUB200, Cars196, ImageCSV, ImageFolder, InShop, StanfordOnlineProducts
from lightning_dml.data.cache import prepare_cache
from lightning_dml.errors import DataError
from tests.conftest import REPO
from tests.data.tree_builders import (
    cars_mat_tree,
    csv_tree,
    cub_tree,
    folder_tree,
    inshop_tree,
    recolour,
    sop_tree,
    truncate_jpeg,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*PARTIAL COPY:UserWarning")

PARTIAL = {"allow_partial": True, "validation": ["test"]}
#: name -> (write the tiny tree under a folder, the data module on it with extra arguments)
CASES = {
    "cub": (
        lambda r: cub_tree(r, {1: 3, 2: 2, 150: 3, 200: 2}),
        lambda r, **k: CUB200(str(r), **PARTIAL, **k),
    ),
    "cars": (
        lambda r: cars_mat_tree(r, {1: 3, 98: 2, 99: 2, 196: 2}),
        lambda r, **k: Cars196(str(r), crop_boxes=True, **PARTIAL, **k),
    ),
    "sop": (
        lambda r: sop_tree(r, {1: 2, 5: 3, 11319: 2, 22634: 3}),
        lambda r, **k: StanfordOnlineProducts(str(r), **PARTIAL, **k),
    ),
    "inshop": (
        lambda r: inshop_tree(
            r,
            {1: {"train": 3}, 2: {"train": 2}, 7: {"query": 2, "gallery": 2}, 9: {"query": 1, "gallery": 2}},
        ),
        lambda r, **k: InShop(str(r), **PARTIAL, **k),
    ),
    "folder": (
        lambda r: folder_tree(r, {"a": 3, "b": 2, "c": 2, "d": 3}),
        lambda r, **k: ImageFolder(str(r), validation=["test"], **k),
    ),
    "csv": (
        lambda r: csv_tree(r, {"train": {1: 2, 2: 3}, "test": {3: 2, 4: 2}}),
        lambda r, **k: ImageCSV(str(r / "list.csv"), validation=["test"], **k),
    ),
}


def sets_of(module) -> dict[str, tuple]:
    """Every set of a set-up module: source indices, class ids, labels, roles and image names."""
    module.setup()
    sets = {"train": module.train_set, **module.val_sets, "test": module.test_set}
    return {
        name: (
            ds.indices.tolist(),
            ds.class_ids.tolist(),
            ds.labels.tolist(),
            None if ds.is_query is None else (ds.is_query.tolist(), ds.is_gallery.tolist()),
            [ds.describe(i) for i in range(len(ds))],
        )
        for name, ds in sets.items()
    }


def files_and_cache(tmp_path: Path, case: str, short_side: int = 256, **kwargs):
    """The module on the tiny tree of ``case`` reading files, and one reading the cache prepared from it."""
    write, make = CASES[case]
    write(tmp_path / "data")
    recolour(tmp_path / "data")
    prepare_cache(make(tmp_path / "data", cache=str(tmp_path / "cache"), **kwargs), short_side, workers=1)
    return make(tmp_path / "data", **kwargs), make(tmp_path / "data", cache=str(tmp_path / "cache"), **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_cache_gives_the_split_labels_roles_and_count_check_of_the_files(tmp_path, case):
    files, cached = files_and_cache(tmp_path, case)
    assert sets_of(cached) == sets_of(files)
    assert getattr(cached, "count_report", None) == getattr(files, "count_report", None)
    assert type(cached.test_set.source).__name__ == "CachedImages"
    assert f"decoded cache {tmp_path / 'cache'}" in cached.summary()


@pytest.mark.parametrize("case", ["cub", "cars", "inshop"])
def test_stored_pixels_are_the_resized_files_and_transforms_agree(tmp_path, case):
    files, cached = files_and_cache(tmp_path, case)
    files.setup(), cached.setup()
    source = files.test_set.source
    for i in range(len(source)):
        resized = v2.Resize(256)(v2.functional.to_image(source.load(i)))
        assert torch.equal(cached.test_set.source.load(i), resized.as_subclass(torch.Tensor))
    for dataset in ("train_set", "test_set"):
        for i in range(len(getattr(files, dataset))):
            torch.manual_seed(i)  # the same random crop and flip on images of the same size
            expected = getattr(files, dataset)[i]["image"]
            torch.manual_seed(i)
            assert torch.equal(getattr(cached, dataset)[i]["image"], expected)


def test_loader_workers_read_the_cache(tmp_path):
    _, cached = files_and_cache(tmp_path, "cub")
    cached.setup()
    loader = DataLoader(cached.test_set, batch_size=2, num_workers=2)
    batches = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(batches, torch.stack([item["image"] for item in cached.test_set]))


def test_a_cache_of_other_images_is_refused_when_read_and_when_prepared(tmp_path):
    files_and_cache(tmp_path, "cub")
    other = tmp_path / "other"
    cub_tree(other, {1: 3, 2: 2, 150: 3})
    with pytest.raises(DataError, match=r"holds the cache of CUB200 at .*10 images, not of this CUB200 \(8"):
        CUB200(str(other), cache=str(tmp_path / "cache"), **PARTIAL).setup()
    with pytest.raises(
        DataError, match=r"holds the cache of CUB200 .*, not of CUB200 .*8 images; choose another"
    ):
        prepare_cache(CUB200(str(other), cache=str(tmp_path / "cache"), **PARTIAL), workers=1)
    with pytest.raises(DataError, match=r"short side 256, .*, not of CUB200 .*short side 300"):
        prepare_cache(CUB200(str(tmp_path / "data"), cache=str(tmp_path / "cache"), **PARTIAL), 300, 1)
    manifest = (tmp_path / "cache/manifest.json").read_text()
    prepare_cache(CUB200(str(tmp_path / "data"), cache=str(tmp_path / "cache"), **PARTIAL), workers=1)
    assert (tmp_path / "cache/manifest.json").read_text() == manifest  # already there: kept as it is
    older = json.loads(manifest) | {"format": "lightning_dml decoded images 1: raw uint8 (3, H, W)"}
    (tmp_path / "cache/manifest.json").write_text(json.dumps(older))
    with pytest.raises(DataError, match=r"of another format \(.*images 1.*\), not .*; delete it and run"):
        CUB200(str(tmp_path / "data"), cache=str(tmp_path / "cache"), **PARTIAL).setup()


def test_missing_cache_folder_that_is_no_cache_and_too_small_images_are_refused(tmp_path):
    cub_tree(tmp_path, {1: 3, 2: 2, 150: 3})
    with pytest.raises(DataError, match=r"no image cache in .*manifest.json missing.*lightning-dml-cache"):
        CUB200(str(tmp_path), cache=str(tmp_path / "nothing"), **PARTIAL).setup()
    with pytest.raises(DataError, match=r"exists and is not an image cache; choose another folder"):
        prepare_cache(CUB200(str(tmp_path), cache=str(tmp_path / "CUB_200_2011"), **PARTIAL), workers=1)
    prepare_cache(CUB200(str(tmp_path), cache=str(tmp_path / "cache"), **PARTIAL), 200, workers=1)
    with pytest.raises(DataError, match=r"resize to 256 px but .* short side 200; .*--short_side 256"):
        CUB200(str(tmp_path), cache=str(tmp_path / "cache"), **PARTIAL).setup()


def test_an_interrupted_or_short_preparation_leaves_no_cache(tmp_path, monkeypatch):
    cub_tree(tmp_path, {1: 3, 2: 2, 150: 3})
    module = CUB200(str(tmp_path), cache=str(tmp_path / "cache"), **PARTIAL)

    def interrupted(fn, inputs, output_dir, **kwargs):
        Path(output_dir).mkdir()
        (Path(output_dir) / "chunk-0-0.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    def short(fn, inputs, output_dir, **kwargs):
        Path(output_dir).mkdir()
        (Path(output_dir) / "index.json").write_text(json.dumps({"chunks": [{"chunk_size": 5}]}))

    monkeypatch.setattr("litdata.optimize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(module, workers=1)
    monkeypatch.setattr("litdata.optimize", short)
    with pytest.raises(DataError, match=r"stored 5 of 8 images .* run lightning-dml-cache again"):
        prepare_cache(module, workers=1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["CUB_200_2011"]


def test_undecodable_images_stop_preparation_unless_skipped_and_stay_left_out(tmp_path):
    cub_tree(tmp_path / "data", {1: 3, 2: 2, 150: 3, 200: 2})
    recolour(tmp_path / "data")
    bad = tmp_path / "data/CUB_200_2011/images/001.Bird_1/Bird_1_0001.jpg"
    truncate_jpeg(bad)
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError, match=r"1 undecodable image files: .*Bird_1_0001.jpg.*skip_corrupt: true"):
        prepare_cache(CUB200(str(tmp_path / "data"), cache=cache, **PARTIAL), workers=1)
    prepare_cache(CUB200(str(tmp_path / "data"), cache=cache, skip_corrupt=True, **PARTIAL), workers=1)
    assert json.loads((tmp_path / "cache/manifest.json").read_text())["skipped"] == [str(bad)]
    with pytest.raises(DataError, match=r"prepared with skip_corrupt: true \(1 undecodable"):
        CUB200(str(tmp_path / "data"), cache=cache, **PARTIAL).setup()
    files = CUB200(str(tmp_path / "data"), skip_corrupt=True, **PARTIAL)
    assert sets_of(CUB200(str(tmp_path / "data"), cache=cache, skip_corrupt=True, **PARTIAL)) == sets_of(
        files
    )


def test_the_command_prepares_the_cache_of_a_data_config(tmp_path, capsys):
    cub_tree(tmp_path, {1: 3, 2: 2, 150: 3})
    args = ["--config", "configs/data/cub.yaml", "--data.init_args.root", str(tmp_path)]
    args += ["--data.init_args.allow_partial", "true", "--data.init_args.cache", str(tmp_path / "cache")]
    cache_main([*args, "--workers", "1", "--short_side", "64"])
    assert "the cache of CUB200 at" in capsys.readouterr().out
    assert json.loads((tmp_path / "cache/manifest.json").read_text())["short_side"] == 64
    with pytest.raises(SystemExit, match=r"^error: .* holds the cache of CUB200 .*short side 64"):
        cache_main([*args, "--workers", "1"])
    with pytest.raises(SystemExit, match=r"^error: data.init_args.cache is not set"):
        cache_main(args[:-2])


def test_preparing_after_the_parent_used_its_thread_pool_does_not_hang(tmp_path):
    # litdata forks its workers; they deadlocked in OpenMP once the parent had used its thread pool
    script = (
        "import sys, torch; torch.set_num_threads(2); x = torch.randn(1500, 1500); (x @ x).contiguous(); "
        "from pathlib import Path; from tests.data.test_cache import CASES; from lightning_dml.data.cache "
        "import prepare_cache; write, make = CASES['cub']; root = Path(sys.argv[1]); write(root / 'data'); "
        "prepare_cache(make(root / 'data', cache=str(root / 'cache')), 64, workers=2)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "cache" / "manifest.json").is_file()
