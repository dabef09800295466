"""Embedding files: the ``.npz`` / Parquet files of one row per image (``embeddings``, ``labels``,
``indices``, and ``is_query`` / ``is_gallery`` / ``paths`` where known) that ``lightning-dml predict``
writes, their writer and their reader; and the JSON manifest of a sharded prediction (one file per rank)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_dml.errors import ConfigError, DataError

#: The suffixes of embedding files.
FORMATS = (".npz", ".parquet")
#: The ``format`` of a manifest of embedding shards.
MANIFEST_FORMAT = "lightning_dml.embedding_shards/1"


def to_numpy(values: torch.Tensor) -> np.ndarray:
    """CPU numpy copy; floating point becomes float32 (numpy has no bfloat16)."""
    values = values.cpu()
    return (values.float() if values.is_floating_point() else values).numpy()


def require_pyarrow() -> None:
    """Raise a one-line ``ConfigError`` when pyarrow is not installed."""
    if importlib.util.find_spec("pyarrow") is None:
        raise ConfigError(
            "Parquet output needs pyarrow: pip install 'lightning-dml[parquet]', or write a .npz file instead"
        )


def write_embeddings(columns: dict[str, np.ndarray], output: Path) -> None:
    """Write ``columns`` (one row per image) to ``output`` (``.npz`` or ``.parquet``, by its suffix)
    atomically: to a temporary file in its folder, created if needed, then renamed over ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            if output.suffix == ".parquet":
                import pyarrow.parquet as pq

                pq.write_table(to_arrow(columns), file)
            else:
                np.savez(file, **columns)
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def to_arrow(columns: dict[str, np.ndarray]) -> Any:
    """A pyarrow table: one row per image, ``embeddings`` as a fixed-size float32 list column."""
    import pyarrow as pa

    arrays = {
        key: pa.FixedSizeListArray.from_arrays(values.reshape(-1), values.shape[1])
        if values.ndim == 2
        else pa.array(values)
        for key, values in columns.items()
    }
    return pa.table(arrays)


def shard_path(output: Path, rank: int, world_size: int) -> Path:
    """The shard that rank ``rank`` of ``world_size`` writes for ``output``
    (``embeddings.rank00001-of-00004.npz``)."""
    return output.with_name(f"{output.stem}.rank{rank:05d}-of-{world_size:05d}{output.suffix}")


def manifest_path(output: Path) -> Path:
    """The manifest listing the shards of ``output``: ``embeddings.manifest.json``."""
    return output.with_name(f"{output.stem}.manifest.json")


def write_manifest(output: Path, rows: list[int]) -> Path:
    """Write (atomically) the manifest of the ``len(rows)`` shards of ``output`` holding ``rows`` rows each;
    return its path. Shard files are named relative to the manifest's folder."""
    manifest = manifest_path(output)
    shards = [{"file": shard_path(output, rank, len(rows)).name, "rows": n} for rank, n in enumerate(rows)]
    content = {"format": MANIFEST_FORMAT, "rows": sum(rows), "shards": shards}
    temporary = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, manifest)
    return manifest


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`write_embeddings` (``lightning-dml predict``'s ``EmbeddingWriter``) into
    numpy arrays, one per column (``embeddings`` is (N, D)); a manifest (``.json``) reads every shard it
    lists into one set of columns, rows in the order of ``indices``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embedding file not found: {path} (run `lightning-dml predict` to write it)")
    if path.suffix == ".json":
        return _read_shards(path)
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return dict(arrays)
    if path.suffix != ".parquet":
        raise DataError(f"cannot read {path}: embedding files end in .npz or .parquet (or .json: a manifest)")
    require_pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if hasattr(column.type, "list_size"):
            columns[name] = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        else:
            columns[name] = column.to_numpy(zero_copy_only=False)
    return columns


def _read_shards(manifest: Path) -> dict[str, np.ndarray]:
    """The columns of every shard a manifest lists, concatenated and ordered by ``indices``."""
    content = json.loads(manifest.read_text())
    if content.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{manifest} is not a manifest of embedding shards (format {MANIFEST_FORMAT})")
    parts = [read_embeddings(manifest.parent / shard["file"]) for shard in content["shards"]]
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    if len(columns["indices"]) != content["rows"]:
        raise DataError(
            f"{manifest} lists {content['rows']} rows but its shards hold {len(columns['indices'])}"
        )
    order = np.argsort(columns["indices"], kind="stable")
    return {key: values[order] for key, values in columns.items()}
