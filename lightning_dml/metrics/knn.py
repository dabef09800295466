"""Exact k-nearest-neighbour search, computed in query chunks.

Similarity (higher = closer):

- ``"cosine"``: ``<q / |q|, g / |g|>``, both sides L2-normalised.
- ``"euclidean"``: ``-|q - g|²``, the negative squared distance.

Self-matches are dropped by identity, never by rank position: when ``query_ids`` and ``gallery_ids`` are
given, a gallery item whose id equals the query's id is never returned. Leave-one-out evaluation passes
the dataset index as the id on both sides, so an exact duplicate of the query (another image with the
same embedding) is still found as a neighbour while the query itself is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dml.errors import DataError

Metric = Literal["cosine", "euclidean"]
Backend = Literal["torch", "faiss"]

#: Upper bound on the bytes of one query-chunk × gallery block when ``chunk_size`` is not given.
BLOCK_BYTES = 256 * 2**20


@dataclass
class Neighbours:
    """Result of a k-NN search, best neighbour first.

    ``indices``: ``(Nq, k)`` long gallery positions, ``-1`` where fewer than ``k`` valid items exist.
    ``scores``: ``(Nq, k)`` float similarities (higher = closer), ``-inf`` at padded positions.
    """

    indices: Tensor
    scores: Tensor


def count_matches(query_keys: Tensor, gallery_keys: Tensor) -> Tensor:
    """For each query key, the number of gallery entries with an equal key: ``(Nq,)`` long.

    Sort-based (``torch.unique``), so memory is O(Nq + Ng), never O(Nq × Ng).
    """
    uniques, codes = torch.unique(torch.cat([gallery_keys, query_keys]), return_inverse=True)
    per_key = torch.bincount(codes[: len(gallery_keys)], minlength=len(uniques))
    return per_key[codes[len(gallery_keys) :]]


def matching_positions(query_keys: Tensor, gallery_keys: Tensor) -> Tensor:
    """``(Nq, m)`` long: the gallery positions whose key equals each query's key, ``-1`` padded.

    ``m`` is the largest number of matches of one query (0 when nothing matches). Sort-based, so memory is
    O(Nq × m + Ng); this is how same-id items are found without an ``Nq × Ng`` boolean mask.
    """
    sorted_keys, order = torch.sort(gallery_keys, stable=True)
    first = torch.searchsorted(sorted_keys, query_keys, side="left")
    stop = torch.searchsorted(sorted_keys, query_keys, side="right")
    width = int((stop - first).max()) if len(query_keys) else 0
    offsets = first[:, None] + torch.arange(width, device=query_keys.device)
    found = offsets < stop[:, None]
    return torch.where(found, order[offsets.clamp(max=max(len(order) - 1, 0))], -1)


def exclude_positions(block: Tensor, positions: Tensor) -> None:
    """Set ``block[i, positions[i, j]]`` to ``-inf`` in place wherever ``positions[i, j] >= 0``."""
    rows, columns = torch.nonzero(positions >= 0, as_tuple=True)
    block[rows, positions[rows, columns]] = float("-inf")


def prepare_embeddings(embeddings: Tensor, metric: Metric) -> Tensor:
    """Detached float (at least float32) copy of ``embeddings``, L2-normalised for ``"cosine"``."""
    embeddings = embeddings.detach().to(torch.promote_types(embeddings.dtype, torch.float32))
    return F.normalize(embeddings, dim=1) if metric == "cosine" else embeddings


def resolve_gallery(
    query_embeddings: Tensor,
    query_labels: Tensor,
    gallery_embeddings: Tensor | None,
    gallery_labels: Tensor | None,
    query_ids: Tensor | None,
    gallery_ids: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(gallery_embeddings, gallery_labels, query_ids, gallery_ids)``: as given, or without a gallery
    (leave-one-out) the queries themselves, each excluded by its id (``query_ids``, default ``arange(Nq)``).
    """
    if gallery_embeddings is not None:
        return gallery_embeddings, gallery_labels, query_ids, gallery_ids
    if query_ids is None:
        query_ids = torch.arange(len(query_labels), device=query_labels.device)
    return query_embeddings, query_labels, query_ids, query_ids


def exact_knn(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    metric: Metric = "cosine",
    query_ids: Tensor | None = None,
    gallery_ids: Tensor | None = None,
    chunk_size: int | None = None,
    backend: Backend = "torch",
    block_bytes: int = BLOCK_BYTES,
) -> Neighbours:
    """Return the exact ``k`` most similar gallery items for every query.

    ``queries`` is ``(Nq, D)``, ``gallery`` is ``(Ng, D)``, on the same device; results come back on it.
    Gallery items whose id equals the query's id are excluded; rows with fewer than ``k`` remaining items
    are padded with index ``-1`` and score ``-inf``. Ties are broken by the backend's top-k.

    ``backend="torch"`` scores ``chunk_size`` queries against the whole gallery at a time into one reused
    block and keeps the top-k of each block, so the full ``Nq × Ng`` matrix never exists. The block takes
    ``chunk_size × Ng × itemsize`` bytes (itemsize = 4 for float32); same-id items are found by a sorted
    lookup (``matching_positions``) and set to ``-inf`` in place. When ``chunk_size`` is None it is the
    largest value keeping the block under ``block_bytes`` (256 MiB by default), and at least 1.

    ``backend="faiss"`` searches a ``faiss.IndexFlatIP`` / ``IndexFlatL2`` (CPU, float32) for
    ``k + m`` items, where ``m`` is the largest number of gallery items sharing one query's id, then drops
    the same-id items; it returns the same neighbours as the torch backend.
    """
    check_search_inputs(queries, gallery, metric, query_ids, gallery_ids, backend, chunk_size)
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}")
    queries, gallery = prepare_embeddings(queries, metric), prepare_embeddings(gallery, metric)
    if query_ids is not None:
        query_ids, gallery_ids = query_ids.to(queries.device), gallery_ids.to(queries.device)

    if len(queries) == 0 or len(gallery) == 0:
        scores = queries.new_empty(len(queries), 0)
        return _finalise(scores, torch.empty_like(scores, dtype=torch.long), k)
    if backend == "faiss":
        scores, indices = _faiss_search(queries, gallery, k, metric, query_ids, gallery_ids)
    else:
        chunk_size = chunk_size or max(1, block_bytes // (len(gallery) * queries.element_size()))
        scores, indices = _torch_search(queries, gallery, k, metric, query_ids, gallery_ids, chunk_size)
    return _finalise(scores, indices, k)


def _torch_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    metric: Metric,
    query_ids: Tensor | None,
    gallery_ids: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Top-min(k, Ng) per query, one ``chunk_size × Ng`` block at a time; same-id items score ``-inf``."""
    excluded = None if query_ids is None else matching_positions(query_ids, gallery_ids)
    gallery_sq = gallery.square().sum(1)
    block_buffer = queries.new_empty(min(chunk_size, len(queries)) * len(gallery))
    top_scores, top_indices = [], []
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        block = block_buffer[: len(chunk) * len(gallery)].view(len(chunk), len(gallery))
        if metric == "euclidean":
            # -|q - g|² = 2<q, g> - |g|² - |q|², written into the reused block.
            torch.addmm(gallery_sq.neg(), chunk, gallery.T, alpha=2, out=block)
            block.sub_(chunk.square().sum(1, keepdim=True)).clamp_(max=0)
        else:
            torch.mm(chunk, gallery.T, out=block)
        if excluded is not None:
            exclude_positions(block, excluded[start : start + chunk_size])
        scores, indices = torch.topk(block, min(k, len(gallery)), dim=1)
        top_scores.append(scores)
        top_indices.append(indices)
    return torch.cat(top_scores), torch.cat(top_indices)


def _faiss_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    metric: Metric,
    query_ids: Tensor | None,
    gallery_ids: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Faiss flat-index search for enough items that ``k`` remain after dropping same-id ones."""
    extra = 0 if query_ids is None else int(count_matches(query_ids, gallery_ids).max())
    scores, indices = faiss_flat_search(queries, gallery, min(k + extra, len(gallery)), metric)
    if query_ids is not None:
        scores = scores.masked_fill(query_ids[:, None] == gallery_ids[indices], float("-inf"))
        # A stable sort moves the dropped items to the end and keeps faiss's order among the rest.
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
        indices = indices.gather(1, order)
    return scores[:, :k], indices[:, :k]


def faiss_flat_search(queries: Tensor, gallery: Tensor, k: int, metric: Metric) -> tuple[Tensor, Tensor]:
    """``(scores, indices)`` ``(Nq, k)`` of an exact faiss flat-index search (CPU, float32), on the
    queries' device: similarities as defined above (faiss's squared L2 negated), ``-1`` past the gallery."""
    try:
        import faiss
    except ImportError as error:
        raise DataError(
            'backend="faiss" needs the faiss package; install it with `pip install faiss-cpu` '
            'or use backend="torch"'
        ) from error
    index = (faiss.IndexFlatIP if metric == "cosine" else faiss.IndexFlatL2)(gallery.shape[1])
    index.add(gallery.cpu().float().contiguous().numpy())
    found_scores, found = index.search(queries.cpu().float().contiguous().numpy(), k)
    scores = torch.from_numpy(found_scores).to(queries.device, queries.dtype)
    return scores if metric == "cosine" else -scores, torch.from_numpy(found).to(queries.device)


def _finalise(scores: Tensor, indices: Tensor, k: int) -> Neighbours:
    """Mark excluded items (score ``-inf``) with index -1 and pad both tensors to ``k`` columns."""
    indices = indices.masked_fill(scores == float("-inf"), -1)
    missing = k - scores.shape[1]
    if missing > 0:
        scores = F.pad(scores, (0, missing), value=float("-inf"))
        indices = F.pad(indices, (0, missing), value=-1)
    return Neighbours(indices=indices, scores=scores)


def check_search_inputs(
    queries: Tensor,
    gallery: Tensor,
    metric: str,
    query_ids: Tensor | None,
    gallery_ids: Tensor | None,
    backend: str,
    chunk_size: int | None,
) -> None:
    """Raise a one-line ``DataError`` naming the first malformed search argument."""
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise DataError(
            f"queries and gallery must be (N, D) with the same D, got {tuple(queries.shape)} and "
            f"{tuple(gallery.shape)}; flatten embeddings to one row per item"
        )
    if queries.device != gallery.device:
        raise DataError(
            f"queries are on {queries.device} but gallery is on {gallery.device}; move both to one"
        )
    if not (torch.isfinite(queries).all() and (gallery is queries or torch.isfinite(gallery).all())):
        raise DataError("embeddings contain NaN or inf; check the model output (did the loss diverge?)")
    if chunk_size is not None and chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1 (or None to fit the memory budget), got {chunk_size}")
    if metric not in ("cosine", "euclidean"):
        raise DataError(f'metric must be "cosine" or "euclidean", got {metric!r}')
    if backend not in ("torch", "faiss"):
        raise DataError(f'backend must be "torch" or "faiss", got {backend!r}')
    if (query_ids is None) != (gallery_ids is None):
        raise DataError("pass both query_ids and gallery_ids, or neither")
    if query_ids is not None and (query_ids.shape != (len(queries),) or gallery_ids.shape != (len(gallery),)):
        raise DataError(
            f"ids must be 1-D with one entry per row, got query_ids {tuple(query_ids.shape)} for "
            f"{len(queries)} queries and gallery_ids {tuple(gallery_ids.shape)} for {len(gallery)} items"
        )
