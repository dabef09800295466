"""``EmbeddingWriter``: writes predicted embeddings, labels, indices and paths to ``.npz`` or Parquet."""

from __future__ import annotations

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
from lightning_dml.callbacks.sharded_evaluation import local_set
from lightning_dml.data.base import ImageFiles
from lightning_dml.errors import ConfigError
from lightning_dml.inference.embedding_files import (
    FORMATS,
    require_pyarrow,
    shard_path,
    to_numpy,
    write_embeddings,
    write_manifest,
)
from lightning_dml.metrics.sharded import Ranks
from lightning_dml.models.readouts import Readout, ReadoutEmbedder

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
    stores ``embeddings`` as a fixed-size list column (``lightning_dml.inference.embedding_files`` writes
    both; its :func:`read_embeddings` reads either).

    With ``shards``, nothing is gathered: each rank writes its own rows (padding dropped by index, rows in
    index order) to ``embeddings.rank{r}-of-{W}.npz`` beside ``output``, and after a barrier rank 0 writes
    ``embeddings.manifest.json`` listing them; ``read_embeddings`` and ``EmbeddingIndex.from_file`` read the
    manifest as one file.

    Args:
        output: file to write, ending in ``.npz`` or ``.parquet``; its folder is created. Default: the run's
            folder (the logger's, else the trainer's ``default_root_dir``) ``/embeddings.npz``.
        readout: write this readout's features (``lightning_dml.models.readouts``) as ``embeddings``
            instead of the model's embedding, e.g. ``{layer: backbone.blocks.2, pooling: grid, size: 7}``.
        shards: one file per rank plus a manifest, instead of one gathered file.
    """

    def __init__(
        self, output: str | Path | None = None, readout: Readout | None = None, shards: bool = False
    ) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output = None if output is None else Path(output)
        self.readout = readout
        self.shards = shards
        self._readout_embedder: ReadoutEmbedder | None = None
        if self.output is not None and self.output.suffix not in FORMATS:
            raise ConfigError(f"prediction output {self.output} must end in .npz or .parquet")
        if self.output is not None and self.output.suffix == ".parquet":
            require_pyarrow()
        self._batches: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the batches of an earlier predict run; trace the readout, if any (in eval mode, as the
        predict loop has set the module)."""
        self._batches.clear()
        self._readout_embedder = (
            None if self.readout is None else ReadoutEmbedder(pl_module, self.readout).eval()
        )

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
        kept = {key: value.detach() for key, value in prediction.items()}
        if self._readout_embedder is not None:
            with torch.no_grad():
                kept["embeddings"] = self._readout_embedder(batch["image"])
        self._batches.append(kept)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        """Gather the kept batches from every rank; rank 0 writes them, de-duplicated and in order."""
        if not self._batches:
            rank_zero_warn("EmbeddingWriter: nothing was predicted, so no file was written")
            return
        if self.shards:
            self._write_shard(trainer)
            return
        outputs = unique_by_index(gather(self._batches))
        self._batches.clear()
        if trainer.is_global_zero:
            output = self._output(trainer)
            write_embeddings(self._columns(trainer, outputs), output)
            rank_zero_info(f"Wrote {len(outputs['indices'])} embeddings to {output.resolve()}")
        trainer.strategy.barrier()

    def _write_shard(self, trainer: L.Trainer) -> None:
        """This rank's rows to its shard; after a barrier, the manifest of every rank's shard (rank 0)."""
        outputs, _ = local_set(self._batches)
        self._batches.clear()
        output = self._output(trainer)
        write_embeddings(
            self._columns(trainer, outputs), shard_path(output, trainer.global_rank, trainer.world_size)
        )
        rows = Ranks().cat(torch.tensor([len(outputs["indices"])])).tolist()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            manifest = write_manifest(output, rows)
            rank_zero_info(
                f"Wrote {sum(rows)} embeddings in {len(rows)} shards listed by {manifest.resolve()}"
            )
        trainer.strategy.barrier()

    def _output(self, trainer: L.Trainer) -> Path:
        """The configured output, or the run folder's ``embeddings.npz``."""
        return self.output or Path(log_directory(trainer) or trainer.default_root_dir, DEFAULT_FILE)

    def _columns(self, trainer: L.Trainer, outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The file's columns: ``outputs`` as numpy, and ``paths`` when the images are files."""
        columns = {key: to_numpy(value) for key, value in outputs.items()}
        loaders = trainer.predict_dataloaders
        dataset = getattr(loaders[0] if isinstance(loaders, Sequence) else loaders, "dataset", None)
        if isinstance(getattr(dataset, "source", None), ImageFiles):
            columns["paths"] = np.array([dataset.describe(int(i)) for i in columns["indices"]])
        return columns
