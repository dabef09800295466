"""Embedding files: the ``.npz`` / Parquet files of one row per image (``embeddings``, ``labels``,
``indices``, and ``is_query`` / ``is_gallery`` / ``paths`` where known) that ``lightning-dml predict``
writes, their writer and their reader."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_dml.errors import ConfigError, DataError

#: The suffixes of embedding files.
FORMATS = (".npz", ".parquet")


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


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`write_embeddings` (``lightning-dml predict``'s ``EmbeddingWriter``) into
    numpy arrays, one per column (``embeddings`` is (N, D))."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embedding file not found: {path} (run `lightning-dml predict` to write it)")
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return dict(arrays)
    if path.suffix != ".parquet":
        raise DataError(f"cannot read {path}: embedding files end in .npz or .parquet")
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
