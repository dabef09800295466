"""``RetrievalEvaluation``: gathers evaluation embeddings from every rank and logs exact retrieval metrics."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import Dataset
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_dml.callbacks.pictures import Pictures, picture_loggers
from lightning_dml.callbacks.sharded_evaluation import (
    check_count,
    gather_to_first,
    local_set,
    picture_ranking,
    rank_shards,
)
from lightning_dml.errors import ConfigError, LightningDMLError
from lightning_dml.inference.index import eval_mode
from lightning_dml.metrics import (
    Ranking,
    classification_from_ranking,
    clustering_metrics,
    metrics_from_ranking,
    rank,
)
from lightning_dml.metrics.sharded import gather_ranking
from lightning_dml.models.readouts import LayerReadouts, Readout
from lightning_dml.seeds import run_seed

Stage = Literal["validate", "test"]
Reference = Literal["untrained", "pixels"]

#: Prefix of the readout features in the collected outputs (``readout/grid7``).
READOUT_KEY = "readout/"
#: The most values per image (channels × height × width) for the ``pixels`` reference.
PIXEL_LIMIT = 4096
#: The default pictures: every validation and the test, with the options' defaults.
PICTURES = Pictures()


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

    With ``references``, ``fit`` first computes the same metrics for every validation set without training,
    in one extra validation pass before the first training step (the random state is restored afterwards, so
    training is unchanged): ``untrained``, the network with its initial weights, and ``pixels``, each image
    as the evaluation transform gives it, flattened, minus the set's mean image, L2-normalised (only for
    images of at most ``PIXEL_LIMIT`` values: larger ones are refused before training starts). They are
    logged once, at step 0, as ``{set}/untrained/{metric}`` and ``{set}/pixels/{metric}`` (and the untrained
    network's readouts as ``{set}/untrained/{readout}/{metric}``), kept in
    :attr:`reference_metrics` for the run summary and saved in the checkpoints: a resumed fit keeps the
    checkpoint's and computes none.

    With ``pictures`` (on by default), the retrieval grids, worst queries, 2-D view and embedding projector
    of every evaluation set are drawn from the outputs and ``Ranking`` the metrics were computed from and
    logged to the trainer's TensorBoard and W&B loggers (see ``Pictures``); ``None`` or
    ``every_n_epochs=0`` turns them off.

    Args:
        recall_at: the K of Recall@K.
        metric: similarity of the k-NN search.
        clustering: also compute NMI and F1 (k-means with one cluster per class, on L2-normalised embeddings
            when ``metric`` is cosine, on the raw ones when it is euclidean).
        cluster: the items k-means clusters: ``queries`` (the query items of a query-vs-gallery set, as the
            G-DML authors' evaluation, pytorch-metric-learning's ``AccuracyCalculator`` with separate query
            and reference sets, does) or ``all`` (queries and gallery together). A leave-one-out set clusters
            all of its items either way: each is a query.
        classification: also compute ``1nn_macro_recall`` and ``1nn_macro_f1`` (the 1-NN classifier's macro
            recall and F1: the G-DML paper's Recall@1 and F-score).
        backend: k-NN implementation (``faiss`` needs the ``faiss`` extra).
        chunk_size: queries per similarity block (``None``: sized to a fixed memory budget).
        seed: k-means seed; ``None``: the run seed (``seed_everything``).
        readouts: named readouts to evaluate beside the embedding, e.g.
            ``{"grid7": Readout("backbone.blocks.2", pooling="grid", size=7)}``.
        references: what ``fit`` evaluates before training, beside the trained network: ``untrained``,
            ``pixels`` or both.
        pictures: what is drawn of each evaluation set and when (``None``: nothing).
        sharded: evaluate without gathering the embeddings (``callbacks.sharded_evaluation``): each rank
            ranks its queries against every rank's share and the metrics are equal to one process's
            (``metrics.sharded``); k-means still clusters the gathered queries on rank 0, and pictures, when
            due, gather the set. Off by default: at SOP size on CPU it is ~3× slower than ranking the
            gathered set on rank 0 (benchmarks/results/sharded_eval.md); it is for sets too large for one
            device.
    """

    def __init__(
        self,
        recall_at: Sequence[int] = (1, 2, 4, 8),
        metric: Literal["cosine", "euclidean"] = "cosine",
        clustering: bool = True,
        cluster: Literal["queries", "all"] = "queries",
        classification: bool = False,
        backend: Literal["torch", "faiss"] = "torch",
        chunk_size: int | None = None,
        seed: int | None = None,
        readouts: Mapping[str, Readout] | None = None,
        references: Sequence[Reference] = (),
        pictures: Pictures | None = PICTURES,
        sharded: bool = False,
    ) -> None:
        self.recall_at = list(recall_at)
        self.metric = metric
        self.clustering = clustering
        self.cluster = cluster
        self.classification = classification
        self.backend = backend
        self.chunk_size = chunk_size
        self.seed = seed
        self.readouts = dict(readouts or {})
        self.references = list(dict.fromkeys(references))
        self.pictures = pictures
        self.sharded = sharded
        self._layer_readouts: LayerReadouts | None = None
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        #: On rank 0, the de-duplicated outputs of each set of the latest evaluation, for later callbacks.
        self.last_outputs: dict[str, dict[str, torch.Tensor]] = {}
        #: On rank 0, each set's ``Ranking`` from the latest evaluation (what the pictures draw, with at least
        #: ``pictures.top_k`` items per query when pictures are on).
        self.last_rankings: dict[str, Ranking] = {}
        #: On rank 0, each set's readout features ``{readout: (N, D)}`` of the latest evaluation, in the
        #: order of ``last_outputs``.
        self.last_readouts: dict[str, dict[str, torch.Tensor]] = {}
        #: The reference rows of this run, ``{"{set}/{reference}/{metric}": value}``, on every rank.
        self.reference_metrics: dict[str, float] = {}

    def draws_pictures(self) -> bool:
        """Whether this evaluation draws pictures at all (``pictures`` set, ``every_n_epochs`` above 0)."""
        return self.pictures is not None and self.pictures.every_n_epochs > 0

    def draw(
        self,
        outputs: dict[str, torch.Tensor],
        dataset: Dataset,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        title: str = "",
    ) -> dict[str, Any]:
        """The ``pictures``' drawings (default ``Pictures()`` when ``None``) of one evaluation set's
        de-duplicated ``outputs`` (see ``Pictures.draw``), from this evaluation's ranking of the set; images
        from ``dataset``, de-normalised with ``mean`` and ``std``."""
        pictures = self.pictures or Pictures()
        return pictures.draw(outputs, self.rank(outputs, pictures.top_k), dataset, mean, std, title)

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
        queries = outputs["is_query"].bool() if "is_query" in outputs else slice(None)
        if self.classification:
            metrics |= classification_from_ranking(ranking, outputs["labels"][queries])
        if self.clustering:
            seed = run_seed() if self.seed is None else self.seed
            clustered = queries if self.cluster == "queries" else slice(None)
            metrics |= clustering_metrics(
                outputs["embeddings"][clustered].float(),
                outputs["labels"][clustered],
                seed=seed,
                normalize=self.metric == "cosine",
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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Say when pictures are on but no logger can show them."""
        if self.draws_pictures() and not picture_loggers(trainer):
            rank_zero_info("RetrievalEvaluation: no TensorBoard or W&B logger, so no pictures are logged")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the validation sets' pictures when due (every ``pictures.every_n_epochs`` epochs)."""
        self._log_pictures(trainer, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the test sets' pictures."""
        self._log_pictures(trainer, "test")

    def _log_pictures(self, trainer: L.Trainer, stage: Stage) -> None:
        if self.pictures is not None and self.pictures.due(trainer, stage):
            self.pictures.log(trainer, self.last_outputs, self.last_rankings, stage)

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
        loaders, names, limited = evaluation_loaders(trainer, stage)
        self.last_outputs, self.last_rankings, self.last_readouts = {}, {}, {}
        for idx, (name, loader) in enumerate(zip(names, loaders, strict=True)):
            batches = self._outputs.pop(idx)
            if self.sharded:
                metrics = self._evaluate_shards(trainer, name, batches, loader, limited[idx], stage)
            else:
                metrics = self._evaluate_gathered(trainer, name, batches, loader, limited[idx], stage)
            for key, value in metrics.items():
                pl_module.log(f"{name}/{key}", value, add_dataloader_idx=False, sync_dist=False)
        self._outputs.clear()
        self._layer_readouts = None

    def _evaluate_gathered(
        self, trainer: L.Trainer, name: str, batches: list, loader: Any, limit: int | float, stage: Stage
    ) -> dict[str, float]:
        """One set's metrics computed on rank 0 from the gathered outputs, broadcast to every rank."""
        outputs = gathered_set(name, batches, loader, limit, stage)
        metrics = None
        if trainer.is_global_zero:
            readouts = pop_readouts(outputs)
            self.last_outputs[name], self.last_readouts[name] = outputs, readouts
            top_k = self.pictures.top_k if self.draws_pictures() else 0
            self.last_rankings[name] = self.rank(outputs, top_k)
            metrics = self.compute(outputs, self.last_rankings[name])
            for readout, features in readouts.items():
                readout_metrics = self.compute(outputs | {"embeddings": features})
                metrics |= {f"{readout}/{key}": value for key, value in readout_metrics.items()}
        return trainer.strategy.broadcast(metrics, src=0)

    def _evaluate_shards(
        self, trainer: L.Trainer, name: str, batches: list, loader: Any, limit: int | float, stage: Stage
    ) -> dict[str, float]:
        """One set's metrics, each rank ranking its own items (``sharded_evaluation``); when pictures are
        due, the set is gathered for them and drawn from the same ranking."""
        outputs, distinct = local_set(batches)
        warning = check_count(name, distinct, len(loader.dataset), limit >= len(loader))
        if warning:
            rank_zero_warn(f"{warning} (limit_{'val' if stage == 'validate' else 'test'}_batches is set)")
        readouts = pop_readouts(outputs)
        pictures = self.draws_pictures() and self.pictures.due(trainer, stage)
        top_k = self.pictures.top_k if pictures else 0
        ranking, labels, ids = rank_shards(
            outputs, outputs["embeddings"], self.metric, self.classification, top_k
        )
        metrics = self._shard_metrics(trainer, outputs, ranking, labels, ids)
        for readout, features in readouts.items():
            found = rank_shards(outputs, features, self.metric, self.classification, 0)
            readout_metrics = self._shard_metrics(trainer, outputs | {"embeddings": features}, *found)
            metrics |= {f"{readout}/{key}": value for key, value in readout_metrics.items()}
        if pictures:
            gathered = unique_by_index(gather([outputs]))
            drawn = picture_ranking(ranking, ids, gathered, top_k)
            if trainer.is_global_zero:
                self.last_outputs[name], self.last_rankings[name] = gathered, drawn
        return metrics

    def _shard_metrics(
        self,
        trainer: L.Trainer,
        outputs: dict[str, torch.Tensor],
        ranking: Ranking,
        query_labels: torch.Tensor,
        query_ids: torch.Tensor,
    ) -> dict[str, float]:
        """``compute``'s metrics from this rank's part of a sharded ranking, the same on every rank."""
        gathered, labels = gather_ranking(ranking, query_labels, query_ids)
        metrics = metrics_from_ranking(gathered, self.recall_at)
        if self.classification:
            metrics |= classification_from_ranking(gathered, labels)
        if self.clustering:
            queries = outputs["is_query"].bool() if "is_query" in outputs else slice(None)
            clustered = queries if self.cluster == "queries" else slice(None)
            items = {
                key: gather_to_first(outputs[key][clustered]) for key in ("embeddings", "labels", "indices")
            }
            found = None
            if trainer.is_global_zero:
                order = torch.argsort(items["indices"])
                seed = run_seed() if self.seed is None else self.seed
                normalize = self.metric == "cosine"
                found = clustering_metrics(
                    items["embeddings"][order].float(), items["labels"][order], seed=seed, normalize=normalize
                )
            metrics |= trainer.strategy.broadcast(found, src=0)
        return metrics

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compute and log the reference rows of every validation set before the first training step (not
        when the fit resumes from a checkpoint: its network is no longer untrained)."""
        if not self.references:
            return
        if trainer.ckpt_path is not None:
            kept = "kept from the checkpoint" if self.reference_metrics else "not in the checkpoint"
            rank_zero_info(
                f"evaluation.references: this fit resumes from {trainer.ckpt_path}, whose network is "
                f"trained; the reference rows are {kept}, none recomputed"
            )
            return
        trainer.fit_loop.epoch_loop.val_loop.setup_data()  # done by the sanity check unless it is off
        if trainer.val_dataloaders is None:
            rank_zero_info("evaluation.references: no validation set, so no reference rows")
            return
        rank_zero_info(f"evaluation.references: evaluating {', '.join(self.references)} before training")
        with isolate_rng(), torch.no_grad(), eval_mode(trainer.model):
            self.reference_metrics = self._reference_pass(trainer)
        for logger in trainer.loggers if self.reference_metrics else []:
            logger.log_metrics(self.reference_metrics, step=trainer.global_step)

    def _reference_pass(self, trainer: L.Trainer) -> dict[str, float]:
        """The reference rows ``{"{set}/{reference}/{metric}": value}`` of every validation set, from one
        validation pass of the network as it is (gathered, computed on rank 0 and broadcast)."""
        loaders, names, limited = evaluation_loaders(trainer, "validate")
        pixels = "pixels" in self.references
        for name, loader in zip(names, loaders, strict=True) if pixels else []:
            check_pixel_size(name, loader)
        rows = {}
        if "untrained" in self.references:  # its readouts too
            self._trace_readouts(trainer.lightning_module)
        for idx, (name, loader) in enumerate(zip(names, loaders, strict=True)):
            for batch, outputs in reference_batches(trainer, loader, idx, limited[idx]):
                images = {"pixels": batch["image"].flatten(1)} if pixels else {}
                self._collect(outputs | images, batch, idx)
            outputs = gathered_set(name, self._outputs.pop(idx), loader, limited[idx], "validate")
            metrics = self._reference_rows(outputs) if trainer.is_global_zero else None
            metrics = trainer.strategy.broadcast(metrics, src=0)
            rows |= {f"{name}/{key}": value for key, value in metrics.items()}
        self._layer_readouts = None
        return rows

    def _reference_rows(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """The metrics ``{"{reference}/{metric}": value}`` of one set's reference pass; the untrained
        network's readouts as ``untrained/{readout}/{metric}``."""
        features = {}
        if "untrained" in self.references:
            features["untrained"] = outputs["embeddings"]
            features |= {f"untrained/{name}": values for name, values in pop_readouts(outputs).items()}
        if "pixels" in self.references:
            features["pixels"] = pixel_features(outputs.pop("pixels"))
        return {
            f"{reference}/{key}": value
            for reference, values in features.items()
            for key, value in self.compute(outputs | {"embeddings": values}).items()
        }

    def state_dict(self) -> dict[str, Any]:
        """The reference rows, so that a resumed fit (and its summary) keeps them."""
        return {"reference_metrics": dict(self.reference_metrics)} if self.reference_metrics else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the reference rows of the checkpoint's run."""
        self.reference_metrics = dict(state_dict.get("reference_metrics", {}))


def pop_readouts(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the readout features from a set's collected ``outputs``; return them, ``{readout: (N, D)}``."""
    keys = [key for key in outputs if key.startswith(READOUT_KEY)]
    return {key.removeprefix(READOUT_KEY): outputs.pop(key) for key in keys}


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The ``pixels`` reference's vectors of one set: each image flattened, minus the mean over the set's
    images, L2-normalised (so that cosine and Euclidean similarity rank alike)."""
    flat = images.flatten(1).float()
    return F.normalize(flat - flat.mean(dim=0), dim=1)


def reference_batches(
    trainer: L.Trainer, loader: Any, dataloader_idx: int, limit: int | float
) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """This rank's ``(batch, outputs)`` of one validation set as the network gives them now: the strategy's
    validation step on batches moved to the device, as in the validation loop (iterate in eval mode without
    gradients)."""
    for batch_idx, batch in enumerate(loader):
        if batch_idx >= limit:
            break
        batch = trainer.precision_plugin.convert_input(batch)
        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=dataloader_idx)
        yield batch, trainer.strategy.validation_step(batch, batch_idx, dataloader_idx)


def check_pixel_size(name: str, loader: Any) -> None:
    """Refuse the ``pixels`` reference for a set whose images hold more than ``PIXEL_LIMIT`` values."""
    shape = tuple(loader.dataset[0]["image"].shape)
    if math.prod(shape) > PIXEL_LIMIT:
        raise ConfigError(
            f"evaluation.references: pixels compares raw images and is meant for small ones (at most "
            f"{PIXEL_LIMIT} values), but {name}'s images have {math.prod(shape)} "
            f"({'×'.join(map(str, shape))}); remove pixels from evaluation.references"
        )


def evaluation_loaders(trainer: L.Trainer, stage: Stage) -> tuple[list[Any], list[str], list[int | float]]:
    """The loaders of a stage's evaluation sets, their names and how many batches of each are evaluated."""
    loaders = trainer.val_dataloaders if stage == "validate" else trainer.test_dataloaders
    loaders = loaders if isinstance(loaders, Sequence) else [loaders]
    limited = trainer.num_val_batches if stage == "validate" else trainer.num_test_batches
    return loaders, set_names(trainer, stage, len(loaders)), limited


def gathered_set(
    name: str, batches: list[dict[str, torch.Tensor]], loader: Any, limit: int | float, stage: Stage
) -> dict[str, torch.Tensor]:
    """One evaluation set's outputs from every rank, de-duplicated by index; refuses a set that lost images
    (warns when ``limit_{val,test}_batches`` evaluates only part of it)."""
    outputs = unique_by_index(gather(batches))
    if len(outputs["indices"]) != len(loader.dataset):
        message = f"{name}: evaluated {len(outputs['indices'])} distinct images of {len(loader.dataset)}"
        if limit >= len(loader):
            raise LightningDMLError(f"{message}: the evaluation loader or its sampler lost images")
        rank_zero_warn(f"{message} (limit_{'val' if stage == 'validate' else 'test'}_batches is set)")
    return outputs


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
