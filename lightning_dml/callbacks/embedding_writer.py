"""``EmbeddingWriter``: writes predicted embeddings, labels, indices and paths to ``.npz`` or Parquet."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_dml.callbacks.retrieval_evaluation import gather, unique_by_index
from lightning_dml.callbacks.run_summary import log_directory
from lightning_dml.data.base import ImageFiles
from lightning_dml.errors import ConfigError, DataError

FORMATS = (".npz", ".parquet")
#: File name of the predictions in the run's folder when no output is configured.
DEFAULT_FILE = "embeddings.npz"


class EmbeddingWriter(BasePredictionWriter):
    """Writes every predicted image once, in dataset order, to one file chosen by its suffix.

    The file holds one row per image of the predict set with the keys the predict step returns
    (``embeddings`` (N, D) float32, ``labels``, ``indices``, and ``is_query`` / ``is_gallery`` where the set
    has roles) plus ``paths`` when the images are files. Under DDP the rows of every rank are gathered, the
    distributed sampler's padded duplicates dropped by dataset index, and rank 0 writes the file atomically
    (a temporary file renamed over the target), so a reader never sees a half-written file.

    ``.npz`` loads with ``numpy.load`` (no pickle); ``.parquet`` needs pyarrow (the ``parquet`` extra) and
    stores ``embeddings`` as a fixed-size list column. :func:`read_embeddings` reads either.

    Args:
        output: file to write, ending in ``.npz`` or ``.parquet``; its folder is created. Default: the run's
            folder (the logger's, else the trainer's ``default_root_dir``) ``/embeddings.npz``.
    """

    def __init__(self, output: str | Path | None = None) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output = None if output is None else Path(output)
        if self.output is not None and self.output.suffix not in FORMATS:
            raise ConfigError(f"prediction output {self.output} must end in .npz or .parquet")
        if self.output is not None and self.output.suffix == ".parquet":
            require_pyarrow()
        self._batches: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the batches of an earlier predict run."""
        self._batches.clear()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Keep the batch's outputs (on their device, for the collective gather at the end)."""
        if dataloader_idx > 0:
            raise ConfigError("EmbeddingWriter writes one predict set; the data module gives several loaders")
        self._batches.append({key: value.detach() for key, value in prediction.items()})

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        """Gather the kept batches from every rank; rank 0 writes them, de-duplicated and in order."""
        if not self._batches:
            rank_zero_warn("EmbeddingWriter: nothing was predicted, so no file was written")
            return
        outputs = unique_by_index(gather(self._batches))
        self._batches.clear()
        if trainer.is_global_zero:
            columns = {key: to_numpy(value) for key, value in outputs.items()}
            loaders = trainer.predict_dataloaders
            dataset = getattr(loaders[0] if isinstance(loaders, Sequence) else loaders, "dataset", None)
            if isinstance(getattr(dataset, "source", None), ImageFiles):
                columns["paths"] = np.array([dataset.describe(int(i)) for i in columns["indices"]])
            output = self.output or Path(log_directory(trainer) or trainer.default_root_dir, DEFAULT_FILE)
            write_atomically(columns, output)
            rank_zero_info(f"Wrote {len(columns['indices'])} embeddings to {output.resolve()}")
        trainer.strategy.barrier()


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


def write_atomically(columns: dict[str, np.ndarray], output: Path) -> None:
    """Write ``columns`` to ``output`` (``.npz`` or ``.parquet``) through a temporary file in its folder."""
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
    """Read a file written by :class:`EmbeddingWriter` into numpy arrays (``embeddings`` is (N, D))."""
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
