"""What the retrieval metrics need from an exact ranking, computed without keeping the ranking.

For a query with label y, the *relevant* gallery items are those labelled y whose id differs from the
query's; same-id items (the query itself in leave-one-out) are left out of the ranking altogether.
Recall@K only needs the rank of the best relevant item, and R-Precision and MAP@R only the first R
positions, so a full top-k list (k = 1000 for SOP's Recall@1000) is never built:

- ``relevant``: R, the number of relevant items.
- ``top_hits``: whether each of the first R ranked items is relevant (``m = max R`` columns, False
  past the query's own R).
- ``first_hit_rank``: how many items score strictly higher than the best relevant one: the 0-based rank of
  the first hit, so Recall@K = [first_hit_rank < K] (a tie with the best relevant item counts in its
  favour).

Why hand-written: torch's ``topk`` with k = 1000 costs more than the matrix product itself on CPU, and
faiss must keep a k-heap per query. Here the gallery is sorted by label (a query's relevant items are one
column range) and each ``chunk × Ng`` block of scores is read by a few vectorised passes: a gather of the
relevant range (its maximum is the best relevant score), group maxima for the top-m (``topm``), and one
comparison with the best relevant score whose row sums are the first-hit ranks. In leave-one-out with
high-dimensional embeddings, ``symmetric`` scores each pair once instead of twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_dml.metrics.knn import (
    BLOCK_BYTES,
    Metric,
    check_search_inputs,
    count_matches,
    matching_positions,
    prepare_embeddings,
    resolve_gallery,
)
from lightning_dml.metrics.symmetric import leave_one_out_ranks
from lightning_dml.metrics.topm import best_of, group_count, row_candidates

INF = float("inf")


@dataclass
class RankSummary:
    """Per query (in the caller's query order): ``relevant`` ``(Nq,)`` long, ``top_hits`` ``(Nq, m)``
    bool and ``first_hit_rank`` ``(Nq,)`` long, as defined in the module docstring.

    ``first_hit_rank`` is meaningless where ``relevant`` is 0.
    """

    relevant: Tensor
    top_hits: Tensor
    first_hit_rank: Tensor


def rank_summary(
    query_embeddings: Tensor,
    query_labels: Tensor,
    gallery_embeddings: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    *,
    query_ids: Tensor | None = None,
    gallery_ids: Tensor | None = None,
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> RankSummary:
    """Exact ``RankSummary`` of every query against the gallery (module docstring).

    Without a gallery this is leave-one-out: the queries are the gallery and ``gallery_ids`` default to
    ``query_ids`` (themselves ``arange(Nq)`` by default).

    Memory beyond the inputs (itemsize s = 4 for float32): one label-sorted, normalised copy of the
    gallery (``Ng × D × s``; with a separate query set also its normalised copy, ``Nq × D × s``), one
    reused score block of at most ``block_bytes`` (256 MiB by default: ``chunk_size × Ng × s`` plus its
    group maxima, or in leave-one-out a strip and its count slice), and O(N × max R) results. When
    ``chunk_size`` is None it is the largest that fits ``block_bytes``.
    """
    leave_one_out = gallery_embeddings is None
    gallery_embeddings, gallery_labels, query_ids, gallery_ids = resolve_gallery(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels, query_ids, gallery_ids
    )
    check_search_inputs(
        query_embeddings, gallery_embeddings, metric, query_ids, gallery_ids, "torch", chunk_size
    )
    device = query_embeddings.device
    query_labels, gallery_labels = query_labels.to(device).contiguous(), gallery_labels.to(device)

    # Sorting the gallery by label makes each query's relevant items one contiguous column range.
    order = torch.argsort(gallery_labels, stable=True)
    gallery_labels = gallery_labels[order]
    most_relevant = _max_relevant(query_labels, gallery_labels)
    groups = group_count(len(gallery_labels), most_relevant)
    gallery = _sorted_padded_gallery(gallery_embeddings, order, metric, groups)
    if leave_one_out:  # the sorted gallery is the query set too: no second copy
        queries, query_labels = gallery[: len(order)], gallery_labels
        query_ids = gallery_ids = query_ids.to(device)[order]
    else:
        queries = prepare_embeddings(query_embeddings, metric)
        gallery_ids = None if gallery_ids is None else gallery_ids.to(device)[order]
        query_ids = None if query_ids is None else query_ids.to(device)
    depth = most_relevant - 1  # leave-one-out with unique ids: R = class size - 1
    halve = leave_one_out and len(order) > 1 and _halving_pays(gallery.shape[1], depth)
    if halve and len(torch.unique(query_ids)) == len(query_ids):  # same id = the diagonal only
        relevant = count_matches(query_labels, gallery_labels) - 1
        # chunk_size rows of the first (widest) strip, or strips of 4/5 of block_bytes (+1/5 for counts).
        cells = chunk_size * len(gallery) if chunk_size else block_bytes * 4 // (5 * gallery.element_size())
        columns, scores, first_hit_rank = leave_one_out_ranks(
            gallery, gallery_labels, metric, groups, depth, cells
        )
        hits = _hits(columns, scores, relevant, gallery_labels, query_labels)
    else:
        relevant, hits, first_hit_rank = _summarise(
            queries, query_labels, gallery, gallery_labels, query_ids, gallery_ids, metric, groups,
            chunk_size, block_bytes,
        )  # fmt: skip
    summary = RankSummary(relevant=relevant, top_hits=hits, first_hit_rank=first_hit_rank)
    if leave_one_out:  # back to the caller's query order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=device)
        summary = RankSummary(*(values[inverse] for values in vars(summary).values()))
    return summary


def _halving_pays(dim: int, depth: int) -> bool:
    """Whether scoring each pair once (``symmetric.leave_one_out_ranks``) beats scoring whole rows.

    It halves the matrix product (cost ∝ ``dim``) but adds a top-``depth`` search per column of every
    strip. Measured on 2 cores, 40k–60k items: 512-d with R ≤ 11 runs 35–40 % faster, 512-d with
    R ≤ 59 10 % faster, 256-d and 128-d with R ≤ 99 30 % and 85 % slower.
    """
    return dim >= 8 * depth


def _max_relevant(query_labels: Tensor, sorted_gallery_labels: Tensor) -> int:
    """Largest number of gallery items sharing one query's label (an upper bound on R)."""
    return int(count_matches(query_labels, sorted_gallery_labels).max()) if len(query_labels) else 0


def _sorted_padded_gallery(embeddings: Tensor, order: Tensor, metric: Metric, groups: int) -> Tensor:
    """Prepared gallery rows in ``order``, then zero rows up to a positive multiple of ``groups``.

    Gathered and normalised in place, so the copy is the only ``Ng × D`` buffer made.
    """
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    padded_length = max(1, -(-len(order) // groups)) * groups
    gallery = embeddings.new_zeros(padded_length, embeddings.shape[1], dtype=dtype)
    rows = gallery[: len(order)]
    torch.index_select(embeddings.detach().to(dtype), 0, order, out=rows)
    if metric == "cosine":  # the same arithmetic as F.normalize
        rows.div_(torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min_(1e-12))
    return gallery


def _summarise(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    query_ids: Tensor | None,
    gallery_ids: Tensor | None,
    metric: Metric,
    groups: int,
    chunk_size: int | None,
    block_bytes: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(relevant, top_hits, first_hit_rank)`` per query, in query order, against a
    label-sorted gallery padded to a multiple of ``groups``, one ``chunk × Ng`` block at a time.

    Everything indexed per query is prepared once for all queries, so each chunk runs a fixed handful of
    block-sized operations (small per-chunk operations cost more than their size suggests on a busy CPU).
    """
    n_gallery, width = len(gallery_labels), len(gallery)
    if chunk_size is None:
        chunk_size = max(1, block_bytes // ((width + width // groups) * gallery.element_size()))
    chunk_size = min(chunk_size, max(1, len(queries)))
    # A query's relevant items: the column range of its label, less its same-id items.
    range_start = torch.searchsorted(gallery_labels, query_labels, side="left")
    range_length = torch.searchsorted(gallery_labels, query_labels, side="right") - range_start
    offsets = torch.arange(max(1, int(range_length.max()) if len(queries) else 1), device=gallery.device)
    relevant, excluded = range_length, None
    if query_ids is not None:
        same_id = matching_positions(query_ids, gallery_ids)
        inside = (same_id >= range_start[:, None]) & (same_id < (range_start + range_length)[:, None])
        relevant = range_length - inside.sum(1)
        excluded = _flat_positions_per_chunk(same_id, chunk_size, width)
    depth = int(relevant.max()) if len(queries) else 0

    block_buffer = gallery.new_empty(chunk_size * width)
    # Euclidean: 2<q, g> - |g|² ranks a row exactly as -|q - g|² does (|q|² is constant along the row).
    shift = -gallery.square().sum(1) if metric == "euclidean" else None
    if shift is not None:
        shift[n_gallery:] = -INF  # padding rows
    sum_dtype = torch.float64 if width >= 2**24 else None  # float32 sums of 0/1 are exact below 2^24
    hits, first_hit_rank = [], []
    for index, start in enumerate(range(0, len(queries), chunk_size)):
        rows = slice(start, start + chunk_size)
        chunk = queries[rows]
        block = block_buffer[: len(chunk) * width].view(len(chunk), width)
        if shift is None:
            torch.mm(chunk, gallery.T, out=block)
            block[:, n_gallery:] = -INF  # padding rows
        else:
            torch.addmm(shift, chunk, gallery.T, alpha=2, out=block)
        if excluded is not None:
            block.view(-1).index_fill_(0, excluded[index], -INF)
        relevant_columns = (range_start[rows, None] + offsets).clamp_(max=width - 1)
        relevant_scores = block.gather(1, relevant_columns)
        relevant_scores.masked_fill_(offsets >= range_length[rows, None], -INF)
        columns, scores = best_of(*row_candidates(block, depth, groups), depth)
        hits.append(_hits(columns, scores, relevant[rows], gallery_labels, query_labels[rows]))
        first_hit_rank.append(block.gt_(relevant_scores.amax(1, keepdim=True)).sum(1, dtype=sum_dtype))

    hits = torch.cat(hits) if hits else torch.zeros(0, depth, dtype=torch.bool, device=gallery.device)
    first_hit_rank = torch.cat(first_hit_rank).long() if first_hit_rank else range_start.new_zeros(0)
    return relevant, hits, first_hit_rank


def _hits(columns: Tensor, scores: Tensor, relevant: Tensor, labels: Tensor, query_labels: Tensor) -> Tensor:
    """``top_hits`` from top lists: relevant (same label, finite score) and within the query's first R."""
    within_r = torch.arange(columns.shape[1], device=columns.device) < relevant[:, None]
    # Padding columns (past the labels) hold -inf scores: clamp them to any valid label position.
    same_label = labels[columns.clamp(max=len(labels) - 1)] == query_labels[:, None]
    return same_label & (scores > -INF) & within_r


def _flat_positions_per_chunk(positions: Tensor, chunk_size: int, width: int) -> list[Tensor]:
    """Per chunk of ``chunk_size`` queries, the flat block offsets ``row × width + column`` of the
    non-negative entries of ``positions`` (``(Nq, m)`` gallery columns, ``-1`` padded)."""
    rows, slots = torch.nonzero(positions >= 0, as_tuple=True)  # row-major, so rows ascend
    flat = (rows % chunk_size) * width + positions[rows, slots]
    n_chunks = -(-len(positions) // chunk_size)
    return list(flat.split(torch.bincount(rows // chunk_size, minlength=n_chunks).tolist()))
