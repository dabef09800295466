"""``RetrievalEvaluation``: gathers evaluation embeddings from every rank and logs exact retrieval metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_dml.errors import LightningDMLError
from lightning_dml.metrics import (
    Ranking,
    classification_from_ranking,
    clustering_metrics,
    metrics_from_ranking,
    rank,
)
from lightning_dml.models.readouts import LayerReadouts, Readout
from lightning_dml.seeds import run_seed

Stage = Literal["validate", "test"]

#: Prefix of the readout features in the collected outputs (``readout/grid7``).
READOUT_KEY = "readout/"


def unique_by_index(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sort rows by ``outputs["indices"]`` and keep the first row of each index.

    A distributed sampler pads the last rank's share with repeated items; dropping them by dataset index
    (never by position) and sorting makes the gathered set identical to a single-process run.
    """
    order = torch.argsort(outputs["indices"], stable=True)
    indices = outputs["indices"][order]
    first = torch.ones_like(indices, dtype=torch.bool)
    first[1:] = indices[1:] != indices[:-1]
    return {key: value[order][first] for key, value in outputs.items()}


class RetrievalEvaluation(L.Callback):
    """Computes Recall@K, precision@1, R-Precision, MAP@R (and NMI, F1) for every evaluation set.

    Each set is evaluated leave-one-out, or query-vs-gallery when its items carry ``is_query``/``is_gallery``.
    Metrics are logged as ``{set}/{metric}`` (``val/recall@1``, ``val_unseen/map@r``, ``test/nmi``), computed
    on rank 0 from the de-duplicated embeddings of all ranks and broadcast, so every rank logs the same values
    and ``ModelCheckpoint(monitor=...)`` works under DDP.

    With ``readouts``, the same metrics are computed on the pooled features of named layers
    (``lightning_dml.models.readouts``) and logged as ``{set}/{readout}/{metric}``
    (``val_unseen/grid7/map@r``); each evaluation batch then runs through the network a second time,
    traced up to those layers.

    Args:
        recall_at: the K of Recall@K.
        metric: similarity of the k-NN search.
        clustering: also compute NMI and F1 (k-means with one cluster per class, on L2-normalised embeddings
            when ``metric`` is cosine, on the raw ones when it is euclidean).
        classification: also compute ``1nn_macro_recall`` and ``1nn_macro_f1`` (the 1-NN classifier's macro
            recall and F1: the G-DML paper's Recall@1 and F-score).
        backend: k-NN implementation (``faiss`` needs the ``faiss`` extra).
        chunk_size: queries per similarity block (``None``: sized to a fixed memory budget).
        seed: k-means seed; ``None``: the run seed (``seed_everything``).
        readouts: named readouts to evaluate beside the embedding, e.g.
            ``{"grid7": Readout("backbone.blocks.2", pooling="grid", size=7)}``.
    """

    def __init__(
        self,
        recall_at: Sequence[int] = (1, 2, 4, 8),
        metric: Literal["cosine", "euclidean"] = "cosine",
        clustering: bool = True,
        classification: bool = False,
        backend: Literal["torch", "faiss"] = "torch",
        chunk_size: int | None = None,
        seed: int | None = None,
        readouts: Mapping[str, Readout] | None = None,
    ) -> None:
        self.recall_at = list(recall_at)
        self.metric = metric
        self.clustering = clustering
        self.classification = classification
        self.backend = backend
        self.chunk_size = chunk_size
        self.seed = seed
        self.readouts = dict(readouts or {})
        self._layer_readouts: LayerReadouts | None = None
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        #: On rank 0, the de-duplicated outputs of each set of the latest evaluation, for later callbacks.
        self.last_outputs: dict[str, dict[str, torch.Tensor]] = {}
        #: On rank 0, each set's ``Ranking`` from the latest evaluation (what the pictures draw).
        self.last_rankings: dict[str, Ranking] = {}
        #: On rank 0, each set's readout features ``{readout: (N, D)}`` of the latest evaluation, in the
        #: order of ``last_outputs``.
        self.last_readouts: dict[str, dict[str, torch.Tensor]] = {}
        #: Best items kept per query in ``last_rankings`` (raised by ``RetrievalPictures``).
        self.top_k = 0

    def rank(self, outputs: dict[str, torch.Tensor], top_k: int = 0) -> Ranking:
        """The exact ``Ranking`` of one evaluation set's de-duplicated outputs: every query against the
        gallery items, or leave-one-out without ``is_query``/``is_gallery``."""
        embeddings, labels, indices = outputs["embeddings"].float(), outputs["labels"], outputs["indices"]
        options = {
            "metric": self.metric,
            "backend": self.backend,
            "chunk_size": self.chunk_size,
            "votes": self.classification,
            "depth": max(self.recall_at),
            "top_k": top_k,
        }
        if "is_query" not in outputs:
            return rank(embeddings, labels, query_ids=indices, **options)
        query, gallery = outputs["is_query"].bool(), outputs["is_gallery"].bool()
        return rank(
            embeddings[query],
            labels[query],
            embeddings[gallery],
            labels[gallery],
            query_ids=indices[query],
            gallery_ids=indices[gallery],
            **options,
        )

    def compute(self, outputs: dict[str, torch.Tensor], ranking: Ranking | None = None) -> dict[str, float]:
        """Return the metrics of one evaluation set's de-duplicated outputs (from ``ranking`` when given)."""
        ranking = self.rank(outputs) if ranking is None else ranking
        metrics = metrics_from_ranking(ranking, self.recall_at)
        if self.classification:
            query_labels = outputs["labels"][outputs["is_query"].bool()] if "is_query" in outputs else None
            metrics |= classification_from_ranking(
                ranking, outputs["labels"] if query_labels is None else query_labels
            )
        if self.clustering:
            seed = run_seed() if self.seed is None else self.seed
            embeddings = outputs["embeddings"].float()
            metrics |= clustering_metrics(
                embeddings, outputs["labels"], seed=seed, normalize=self.metric == "cosine"
            )
        return metrics

    def _collect(self, outputs: Any, batch: dict[str, Any], dataloader_idx: int) -> None:
        kept = {key: value.detach() for key, value in outputs.items()}
        if self._layer_readouts is not None:
            with torch.no_grad():
                features = self._layer_readouts(batch["image"])
            kept |= {READOUT_KEY + name: value for name, value in features.items()}
        self._outputs[dataloader_idx].append(kept)

    def _trace_readouts(self, pl_module: L.LightningModule) -> None:
        """Trace the module up to the readout layers (again at each evaluation: the module may have been
        replaced, as by a checkpoint's weights); in eval mode, as the evaluation loop has set the module."""
        self._layer_readouts = LayerReadouts(pl_module, self.readouts).eval() if self.readouts else None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Trace the readouts, if any."""
        self._trace_readouts(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Trace the readouts, if any."""
        self._trace_readouts(pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        """Keep the batch's embeddings, labels, indices and readout features."""
        self._collect(outputs, batch, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Keep the batch's embeddings, labels, indices and readout features."""
        self._collect(outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate every validation set (not during the sanity check, which sees only a few batches)."""
        if trainer.sanity_checking:
            self._outputs.clear()
            return
        self._evaluate(trainer, pl_module, "validate")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the test set(s)."""
        self._evaluate(trainer, pl_module, "test")

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        loaders = trainer.val_dataloaders if stage == "validate" else trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, Sequence) else [loaders]
        limited = trainer.num_val_batches if stage == "validate" else trainer.num_test_batches
        self.last_outputs, self.last_rankings, self.last_readouts = {}, {}, {}
        for idx, (name, loader) in enumerate(
            zip(set_names(trainer, stage, len(loaders)), loaders, strict=True)
        ):
            outputs = unique_by_index(gather(self._outputs.pop(idx)))
            if len(outputs["indices"]) != len(loader.dataset):
                message = (
                    f"{name}: evaluated {len(outputs['indices'])} distinct images of {len(loader.dataset)}"
                )
                if limited[idx] >= len(loader):
                    raise LightningDMLError(f"{message}: the evaluation loader or its sampler lost images")
                rank_zero_warn(f"{message} (limit_{'val' if stage == 'validate' else 'test'}_batches is set)")
            metrics = None
            if trainer.is_global_zero:
                readouts = {
                    key.removeprefix(READOUT_KEY): outputs.pop(key)
                    for key in list(outputs)
                    if key.startswith(READOUT_KEY)
                }
                self.last_outputs[name], self.last_readouts[name] = outputs, readouts
                self.last_rankings[name] = self.rank(outputs, self.top_k)
                metrics = self.compute(outputs, self.last_rankings[name])
                for readout, features in readouts.items():
                    readout_metrics = self.compute(outputs | {"embeddings": features})
                    metrics |= {f"{readout}/{key}": value for key, value in readout_metrics.items()}
            metrics = trainer.strategy.broadcast(metrics, src=0)
            for key, value in metrics.items():
                pl_module.log(f"{name}/{key}", value, add_dataloader_idx=False, sync_dist=False)
        self._outputs.clear()
        self._layer_readouts = None


def gather(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate one rank's batches, then every rank's (uneven sizes allowed)."""
    local = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    return {key: torch.cat(gather_all_tensors(value)) for key, value in local.items()}


def set_names(trainer: L.Trainer, stage: Stage, count: int) -> list[str]:
    """Names of the evaluation sets, from the data module when it names them."""
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "evaluation_sets"):
        return list(datamodule.evaluation_sets(stage))
    base = "val" if stage == "validate" else "test"
    return [base] if count == 1 else [f"{base}_{i}" for i in range(count)]
