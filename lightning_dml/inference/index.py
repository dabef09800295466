"""``EmbeddingIndex``: exact nearest-neighbour search over a gallery of embeddings, saved as one file."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dml.errors import DataError
from lightning_dml.inference.embedding_files import read_embeddings
from lightning_dml.metrics.knn import Backend, Metric, check_search_inputs, exact_knn, prepare_embeddings


class EmbeddingIndex:
    """A searchable gallery: embeddings with optional labels, integer ids and image paths.

    ``search`` is exact. ``backend="torch"`` runs :func:`lightning_dml.metrics.knn.exact_knn` on the
    gallery's device; ``backend="faiss"`` keeps a ``faiss.IndexFlatIP`` (cosine) or ``IndexFlatL2``
    (euclidean) built once on the first search, and returns the same neighbours. Scores follow ``exact_knn``:
    cosine similarity, or minus the squared euclidean distance; higher is closer.

    For galleries beyond an exact search, ``approximate`` names a faiss index (``faiss.index_factory``:
    ``"IVF1024,Flat"``, ``"IVF1024,PQ64"``, ``"HNSW32"``), trained on the gallery at the first search and
    searched with ``probes`` inverted lists (IVF's ``nprobe``) or candidates (HNSW's ``efSearch``): faster,
    no longer exact; measure its recall against the exact search (``tests/inference/test_index.py``).

    Args:
        embeddings: gallery embeddings (N, D); kept as float32, L2-normalised for ``cosine``.
        labels: class id of each gallery item (N,), for :meth:`labels_of`.
        ids: unique integer id of each item (N,), returned by :meth:`search`; default ``0..N-1``. The
            ``indices`` column written by ``lightning-dml predict`` fits here.
        paths: image path of each item, for :meth:`paths_of`.
        metric: ``cosine`` or ``euclidean``.
        backend: ``torch`` or ``faiss`` (needs the ``faiss`` extra).
        approximate: a faiss ``index_factory`` description for an approximate search (needs faiss).
        probes: IVF lists visited (``nprobe``), or HNSW's ``efSearch``, per query.
    """

    def __init__(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        ids: Tensor | None = None,
        paths: Sequence[str] | None = None,
        metric: Metric = "cosine",
        backend: Backend = "torch",
        approximate: str | None = None,
        probes: int = 16,
    ) -> None:
        embeddings = torch.as_tensor(embeddings)
        check_search_inputs(embeddings, embeddings, metric, None, None, backend, None)
        if len(embeddings) == 0:
            raise DataError("the gallery is empty; build the index from at least one embedding")
        self.embeddings = prepare_embeddings(embeddings, metric).float()
        self.ids = (
            torch.arange(len(embeddings)) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        ).cpu()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).cpu()
        self.paths = None if paths is None else [str(path) for path in paths]
        for name, values in (("labels", self.labels), ("ids", self.ids), ("paths", self.paths)):
            if values is not None and len(values) != len(embeddings):
                raise DataError(f"{len(values)} {name} for {len(embeddings)} embeddings; give one per item")
        self._sorted_ids, self._id_order = torch.sort(self.ids)
        if (self._sorted_ids[1:] == self._sorted_ids[:-1]).any():
            raise DataError("ids repeat; give every gallery item its own id")
        self.metric = metric
        self.backend = "faiss" if approximate else backend
        self.approximate = approximate
        self.probes = probes
        self._faiss_index: Any = None

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Return ``(scores, ids)``, each (Nq, k), of the ``k`` gallery items closest to each query row.

        Rows are best first; where ``k`` exceeds the gallery, the missing columns hold score ``-inf`` and
        id ``-1``. Results are on the gallery's device (CPU for the faiss backend).
        """
        queries = torch.as_tensor(queries).to(self.embeddings.device)
        if self.backend == "faiss":
            check_search_inputs(queries, self.embeddings, self.metric, None, None, "faiss", None)
            if k < 1:
                raise DataError(f"k must be at least 1, got {k}")
            scores, positions = self._faiss_search(prepare_embeddings(queries, self.metric), k)
        else:
            found = exact_knn(queries, self.embeddings, k, metric=self.metric)
            scores, positions = found.scores, found.indices
        ids = self.ids.to(positions.device)[positions.clamp(min=0)]
        return scores, ids.masked_fill(positions < 0, -1)

    def search_images(
        self, model: Callable[[Tensor], Tensor], images: Tensor, k: int, batch_size: int = 256
    ) -> tuple[Tensor, Tensor]:
        """Embed ``images`` with ``model`` (see :func:`embed_images`) and :meth:`search` with them."""
        return self.search(embed_images(model, images, batch_size), k)

    def labels_of(self, ids: Tensor) -> Tensor:
        """Labels of the items with these ids (any shape); ``-1`` where the id is ``-1`` (no neighbour)."""
        if self.labels is None:
            raise DataError("this index has no labels; pass labels= when building it")
        positions = self._positions(ids)
        return self.labels[positions.clamp(min=0)].masked_fill(positions < 0, -1)

    def paths_of(self, ids: Tensor) -> list[list[str | None]]:
        """Image paths of the items with these ids (Nq, k), ``None`` where the id is ``-1``."""
        if self.paths is None:
            raise DataError("this index has no paths; pass paths= when building it")
        return [[self.paths[p] if p >= 0 else None for p in row] for row in self._positions(ids).tolist()]

    def _positions(self, ids: Tensor) -> Tensor:
        """Gallery positions of ``ids`` (``-1`` stays ``-1``); unknown ids raise a DataError."""
        ids = torch.as_tensor(ids, dtype=torch.long).cpu()
        slots = torch.searchsorted(self._sorted_ids, ids).clamp(max=len(self) - 1)
        known = self._sorted_ids[slots] == ids
        if not known[ids >= 0].all():
            raise DataError(f"id {int(ids[~known & (ids >= 0)][0])} is not in this index")
        return self._id_order[slots].masked_fill(ids < 0, -1)

    def _faiss_search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Search the cached faiss flat index for min(k, N) items and pad to ``k`` columns."""
        if self._faiss_index is None:
            self._faiss_index = self._build_faiss_index()
        scores, positions = self._faiss_index.search(
            queries.cpu().float().contiguous().numpy(), min(k, len(self))
        )
        scores, positions = torch.from_numpy(scores), torch.from_numpy(positions)
        if self.metric == "euclidean":
            scores = -scores  # faiss returns squared distances
        missing = k - scores.shape[1]
        return F.pad(scores, (0, missing), value=float("-inf")), F.pad(positions, (0, missing), value=-1)

    def _build_faiss_index(self) -> Any:
        """The gallery's faiss index, built once and kept: flat (exact), or ``approximate``'s, trained."""
        try:
            import faiss
        except ImportError as error:
            raise DataError(
                'backend="faiss" needs the faiss package; pip install faiss-cpu, or use backend="torch"'
            ) from error
        gallery = self.embeddings.cpu().contiguous().numpy()
        kind = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        index = faiss.index_factory(gallery.shape[1], self.approximate or "Flat", kind)
        index.train(gallery)
        index.add(gallery)
        if self.approximate:
            name = "efSearch" if "HNSW" in self.approximate else "nprobe"
            faiss.ParameterSpace().set_index_parameter(index, name, self.probes)
        return index

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> EmbeddingIndex:
        """The index of an embedding file or a manifest of shards (:func:`read_embeddings`): its
        ``embeddings``, ``labels``, ``indices`` as ids and ``paths`` where present; ``options`` as for the
        constructor (``metric``, ``backend``, ``approximate``, ``probes``)."""
        columns = read_embeddings(path)
        embeddings = torch.from_numpy(columns["embeddings"])
        return cls(embeddings, columns.get("labels"), columns.get("indices"), columns.get("paths"), **options)

    def save(self, path: str | Path) -> None:
        """Save the gallery, labels, ids, paths and metric to ``path`` (``torch.save`` of plain tensors)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        state = {
            "embeddings": self.embeddings.cpu(),
            "labels": self.labels,
            "ids": self.ids,
            "paths": self.paths,
            "metric": self.metric,
        }
        torch.save(state, path)

    @classmethod
    def load(
        cls, path: str | Path, backend: Backend = "torch", device: str | torch.device = "cpu"
    ) -> EmbeddingIndex:
        """Load an index written by :meth:`save` (``weights_only=True``), its gallery on ``device``."""
        if not Path(path).is_file():
            raise DataError(f"index file not found: {path} (write one with EmbeddingIndex.save)")
        state = torch.load(path, map_location=device, weights_only=True)
        return cls(
            state["embeddings"], state["labels"], state["ids"], state["paths"], state["metric"], backend
        )


@torch.no_grad()
def embed_images(model: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256) -> Tensor:
    """Embeddings (N, D) of ``images`` (N, C, H, W), computed ``batch_size`` at a time.

    ``model`` maps a batch of images to embeddings: a trained ``RetrievalModule`` (its ``forward`` is
    ``embed``), a TorchScript export, any ``nn.Module``. Modules run in eval mode (restored afterwards) on
    their own device. Images must be transformed as in evaluation (the data module's eval transform).
    """
    if len(images) == 0:
        raise DataError("no images to embed; pass a (N, C, H, W) batch with N >= 1")
    device = next(model.parameters(), images).device if isinstance(model, nn.Module) else images.device
    with eval_mode(model) if isinstance(model, nn.Module) else nullcontext():
        batches = [model(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    return torch.cat(batches)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block, then give every sub-module its own training flag back."""
    flags = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for sub, training in flags.items():
            sub.training = training
