"""The prediction writer: dataset order, one row per image, paths, both formats, atomic writes."""

import importlib.util

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lightning_dml.callbacks import EmbeddingWriter
from lightning_dml.data import ImageFiles, RetrievalDataset, TensorImages
from lightning_dml.errors import ConfigError, DataError
from lightning_dml.inference import EmbeddingIndex
from lightning_dml.inference.embedding_files import read_embeddings, to_numpy
from lightning_dml.methods import RetrievalModule
from tests.conftest import run_module


class Flatten(RetrievalModule):
    """Embeds an image as its flattened pixels, so the expected embeddings are known exactly."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float()


def predict(dataset: RetrievalDataset, output, sampler=None) -> None:
    """Predict ``dataset`` in batches of 4 with an ``EmbeddingWriter`` writing to ``output``."""
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EmbeddingWriter(output)],
    )
    trainer.predict(Flatten(), DataLoader(dataset, batch_size=4, sampler=sampler), return_predictions=False)


def tensor_dataset(n: int = 10) -> RetrievalDataset:
    """``n`` 1×2×2 uint8 images whose pixels are ``4i .. 4i+3``, labelled ``i % 3``."""
    images = torch.arange(4 * n, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return RetrievalDataset(TensorImages(images, torch.arange(n) % 3), transform=lambda image: image.float())


def test_npz_holds_each_image_once_in_dataset_order(tmp_path):
    dataset = tensor_dataset()
    # A sampler like a padded DistributedSampler: out of order, with repeats.
    predict(dataset, tmp_path / "out/embeddings.npz", sampler=[7, 3, 0, 9, 1, 2, 8, 4, 5, 6, 0, 3])
    columns = read_embeddings(tmp_path / "out/embeddings.npz")
    assert set(columns) == {"embeddings", "labels", "indices"}  # tensor images have no paths
    np.testing.assert_array_equal(columns["indices"], np.arange(10))
    np.testing.assert_array_equal(columns["labels"], [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(columns["embeddings"], np.arange(40, dtype=np.float32).reshape(10, 4))
    assert columns["embeddings"].dtype == np.float32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["embeddings.npz"]  # no temporary left


def test_parquet_round_trip_with_image_paths_equals_npz(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"image_{i}.png")
        Image.fromarray(np.full((2, 2, 3), 40 * i, dtype=np.uint8)).save(paths[-1])
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32)])
    dataset = RetrievalDataset(ImageFiles(paths, [5, 5, 7, 7, 9, 9]), indices=[5, 3, 1], transform=transform)
    predict(dataset, tmp_path / "embeddings.parquet")
    predict(dataset, tmp_path / "embeddings.npz")
    table = pq.read_table(tmp_path / "embeddings.parquet")
    assert table.num_rows == 3 and table.schema.field("embeddings").type.list_size == 12
    parquet, npz = (
        read_embeddings(tmp_path / "embeddings.parquet"),
        read_embeddings(tmp_path / "embeddings.npz"),
    )
    assert set(parquet) == set(npz) == {"embeddings", "labels", "indices", "paths"}
    for key in npz:
        np.testing.assert_array_equal(parquet[key], npz[key])
    assert list(npz["paths"]) == [str(paths[5]), str(paths[3]), str(paths[1])]
    np.testing.assert_array_equal(npz["labels"], [9, 7, 5])
    np.testing.assert_array_equal(npz["embeddings"][:, 0], [200.0, 120.0, 40.0])


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    output = tmp_path / "embeddings.npz"
    predict(tensor_dataset(4), output)
    before = output.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        predict(tensor_dataset(8), output)
    assert output.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["embeddings.npz"]


def test_bfloat16_embeddings_are_written_as_float32():
    values = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)
    converted = to_numpy(values)
    assert converted.dtype == np.float32 and converted.tolist() == [[1.5, -2.0]]


def test_bad_output_names_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"must end in \.npz or \.parquet"):
        EmbeddingWriter(tmp_path / "embeddings.csv")
    with pytest.raises(DataError, match="not found"):
        read_embeddings(tmp_path / "missing.npz")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "pyarrow" else real_find_spec(name)
    )
    with pytest.raises(ConfigError, match=r"pip install 'lightning-dml\[parquet\]'"):
        EmbeddingWriter(tmp_path / "embeddings.parquet")


def test_two_ranks_write_one_shard_each_and_a_manifest_that_reads_as_one_file(tmp_path):
    for folder, world_size, shards in (("single", 1, "0"), ("sharded", 2, "1")):
        out = tmp_path / folder / "embeddings.npz"
        run_module("tests.callbacks.sharded_prediction_run", str(out), str(world_size), shards)
    names = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert names == [
        "embeddings.manifest.json",
        "embeddings.rank00000-of-00002.npz",
        "embeddings.rank00001-of-00002.npz",
    ]
    shards = [read_embeddings(tmp_path / "sharded" / name) for name in names[1:]]
    assert [len(shard["indices"]) for shard in shards] == [6, 5]  # the padded repeat written once
    single = read_embeddings(tmp_path / "single/embeddings.npz")
    merged = read_embeddings(tmp_path / "sharded/embeddings.manifest.json")
    assert set(merged) == set(single)
    for key in single:
        np.testing.assert_array_equal(merged[key], single[key])
    index = EmbeddingIndex.from_file(tmp_path / "sharded/embeddings.manifest.json", metric="euclidean")
    _, ids = index.search(torch.from_numpy(single["embeddings"][[3]]), 2)
    assert ids.tolist() == [[3, 2]] and index.labels_of(ids).tolist() == [[0, 2]]
