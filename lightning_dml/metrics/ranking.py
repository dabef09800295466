"""The one exact ranking of every query against a gallery, and its per-query result ``Ranking``.

For a query with label y, the *relevant* gallery items are those labelled y whose id differs from the
query's; same-id items (the query itself in leave-one-out) are left out of the ranking altogether. Items
are ordered by similarity (``knn`` module docstring); items of equal similarity form a tie group whose
internal order is uniformly random, and every measure is its expected value over that order (``ties``).

**Exactness.** Orderings are decided on float64 similarities (cosine of float64-normalised vectors;
-|q - g|² from float64 inner products and norms). Scoring everything in float64 would double the cost, so
a float32 *screen* scores every pair first, and every comparison a query's measures depend on that is
closer than twice the screen's worst-case error ``δ`` (``screen_tolerance``) is decided again in float64:
the items near its best relevant score are re-scored pair by pair (``_resolve_windows``); close,
differently relevant neighbours in its top list by re-scoring those listed items (``_rescore_lists``);
and what the list cannot settle (an unlisted item might still reach its first R or its nearest item) by
re-scoring its whole row (``_exact_rows``, where exact duplicates are scored once so that they tie).
Elsewhere the float32 order is provably the float64 order. Values equal in real arithmetic but not in
float64 (possible with lattice-valued data) are ordered by float64.

**The screens.** ``backend="torch"`` scores ``chunk × Ng`` blocks against the label-sorted gallery (a
query's relevant items are one column range) and never keeps the full top-k list for Recall@K: the rank of
the first hit is a count of the items above the best relevant score, and the first ``max R + 4`` items come
from group maxima (``topm``), which also find the items above and near that score: from the list where it
reaches past them, else from the groups whose maximum reaches them. In leave-one-out with unique ids and
wide embeddings each pair is scored once (``symmetric``). ``backend="faiss"`` takes the same facts from a
faiss flat-index search of ``depth`` neighbours; queries whose first hit lies deeper are resolved in
float64. Both give the same ``Ranking`` (top lists may order exact ties differently).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dml.metrics.knn import (
    BLOCK_BYTES,
    Backend,
    Metric,
    check_search_inputs,
    faiss_flat_search,
    matching_positions,
    prepare_embeddings,
    resolve_gallery,
)
from lightning_dml.metrics.symmetric import leave_one_out_screen
from lightning_dml.metrics.ties import expected_precisions, expected_recall_at
from lightning_dml.metrics.topm import best_of, group_size, row_candidates, row_group_maxima, row_windows

INF = float("inf")
#: Unit roundoff of float32, the screen's precision.
FLOAT32_ROUNDOFF = 2.0**-24
#: Items listed per query beyond the largest R.
LIST_MARGIN = 4
#: Queries per pass of the per-query arithmetic on top lists (bounds its temporaries).
ROWS_PER_PASS = 2**14
#: Pairs re-scored one by one unless they fill more than 1/DENSE_PAIRS of their rows (then by whole rows:
#: a matrix product costs far less per pair than gathering each pair's two vectors).
DENSE_PAIRS = 16


@dataclass
class Ranking:
    """Per query (in the caller's query order), what every retrieval measure and picture reads.

    - ``relevant`` ``(Nq,)``: R, the number of relevant gallery items.
    - ``above``, ``tied``, ``tied_relevant`` ``(Nq,)``: items scoring strictly above the best relevant
      item, items scoring equal to it (itself included) and the relevant ones among those; without ties
      ``above`` is the 0-based rank of the first hit. Meaningless where R = 0.
    - ``average_precision``, ``r_precision`` ``(Nq,)`` float64: expected AP@R and R-Precision, NaN where
      R = 0.
    - ``top_indices`` ``(Nq, k)``: gallery positions (the caller's order) of the best items, best first,
      ``-1`` past the available items; ``top_scores``: their similarities (float64), ``-inf`` there.
      ``k = max(max R + 4, top_k)``.
    - ``votes`` ``(Nq, C)`` float64 (only when asked): the expected 1-NN vote of each query for each
      gallery label ``vote_labels`` ``(C,)``: 1/t for each label among its t equally nearest items.
    """

    relevant: Tensor
    above: Tensor
    tied: Tensor
    tied_relevant: Tensor
    average_precision: Tensor
    r_precision: Tensor
    top_indices: Tensor
    top_scores: Tensor
    votes: Tensor | None = None
    vote_labels: Tensor | None = None

    def recall_at(self, k: int) -> Tensor:
        """Expected Recall@k per query ``(Nq,)`` float64: 1 if a relevant item ranks within the first k."""
        return expected_recall_at(self.above, self.tied, self.tied_relevant, k)


def screen_tolerance(queries: Tensor, gallery: Tensor, metric: Metric) -> Tensor:
    """Per query ``(Nq,)``: a bound δ on |float32 screen score - float64 score| for any gallery item.

    Cosine (rows normalised in float32, then one float32 dot product): each normalised component is off by
    at most (D/2 + 2)u relatively and the dot product accumulates D·u, so δ = (2D + 8)u with u = 2⁻²⁴.
    Euclidean (screen value 2<q, g> - |g|², or faiss's |q|² + |g|² - 2<q, g>): δ = (D + 4)u·2(|q|² + max|g|²).
    """
    dim = queries.shape[1]
    if metric == "cosine":
        return queries.new_full((len(queries),), (2 * dim + 8) * FLOAT32_ROUNDOFF, dtype=torch.float64)
    largest = float(gallery.double().square().sum(1).max()) if len(gallery) else 0.0
    return (dim + 4) * FLOAT32_ROUNDOFF * 2 * (queries.double().square().sum(1) + largest)


def rank(
    query_embeddings: Tensor,
    query_labels: Tensor,
    gallery_embeddings: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    *,
    query_ids: Tensor | None = None,
    gallery_ids: Tensor | None = None,
    metric: Metric = "cosine",
    top_k: int = 0,
    votes: bool = False,
    backend: Backend = "torch",
    depth: int = 0,
    chunk_size: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Ranking:
    """The exact ``Ranking`` of every query against the gallery (module docstring).

    Without a gallery this is leave-one-out: the queries are the gallery, each query excluded by its id
    (``query_ids``, default ``arange(Nq)``), never by position, so exact duplicates remain neighbours.
    ``top_k``: keep at least this many best items per query; ``votes``: also compute the 1-NN votes;
    ``depth``: faiss searches at least this many neighbours (e.g. the largest K of Recall@K).

    Memory (itemsize s = 4 for float32): a label-sorted prepared copy of the gallery, one reused score block
    of at most ``block_bytes`` (``chunk_size × Ng × s``; ``chunk_size`` None = the largest that fits), and
    O(Nq × k) results; re-scored queries use float64 blocks of the same budget.
    """
    leave_one_out = gallery_embeddings is None
    gallery_embeddings, gallery_labels, query_ids, gallery_ids = resolve_gallery(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels, query_ids, gallery_ids
    )
    check_search_inputs(
        query_embeddings, gallery_embeddings, metric, query_ids, gallery_ids, backend, chunk_size
    )
    device = query_embeddings.device
    query_labels, gallery_labels = query_labels.to(device).contiguous(), gallery_labels.to(device)
    order = torch.argsort(gallery_labels, stable=True)  # a label's items become one column range
    problem = _Problem(
        query_labels=query_labels,
        labels=gallery_labels[order],
        excluded=None if query_ids is None else matching_positions(query_ids.to(device), gallery_ids[order]),
        metric=metric,
    )
    # A few items past the largest R, so near-ties at a query's R-th item are mostly settled in the list.
    width = max(problem.most_relevant + LIST_MARGIN, top_k, 2)
    if len(gallery_embeddings) == 0:
        return _nothing_found(len(query_labels), width, votes, device)
    queries = prepare_embeddings(query_embeddings, metric)
    gallery = prepare_embeddings(gallery_embeddings, metric)[order]
    tolerance = 2 * screen_tolerance(queries, gallery, metric)
    halve = (
        backend == "torch"
        and leave_one_out
        and _halving_pays(queries.shape[1], problem.most_relevant)
        and len(torch.unique(query_ids)) == len(query_ids)  # same id = the diagonal only
    )
    with _full_float32_precision():
        if backend == "faiss":
            screen = _faiss_screen(queries, gallery, problem, max(width, depth), tolerance)
        elif halve:
            screen = _half_screen(gallery, problem, order, width, tolerance, chunk_size, block_bytes)
        else:
            screen = _torch_screen(queries, gallery, problem, width, tolerance, chunk_size, block_bytes)
    columns, scores, above, window = screen
    columns, scores = _pad_columns(columns, scores, width)
    columns, scores = columns[:, :width], scores[:, :width].double()
    if metric == "euclidean" and backend == "torch" and not halve:  # its values lack the constant -|q|²
        scores -= queries.double().square().sum(1, keepdim=True)
    hits = problem.hits(columns, scores)
    labels = problem.listed_labels(columns)
    unknown = (above < 0) & (problem.relevant > 0)
    ranked = _Ranked.from_screen(problem, columns, scores, hits, above, votes)
    sorted_gallery = gallery_embeddings[order]
    _resolve_windows(ranked, window, query_embeddings, sorted_gallery, problem)
    unclear = _unclear(scores, hits, labels, problem.relevant, tolerance, votes)
    unclear = _rescore_lists(ranked, unclear, query_embeddings, sorted_gallery, problem, tolerance, votes)
    rows = torch.nonzero(unclear | unknown).flatten()
    if len(rows):
        _exact_rows(ranked, rows, query_embeddings, sorted_gallery, problem, width, block_bytes)
    return ranked.finish(problem, order)


def _nothing_found(n_queries: int, width: int, votes: bool, device: torch.device) -> Ranking:
    """The ``Ranking`` against an empty gallery: every query lone, nothing listed."""
    zeros = torch.zeros(n_queries, dtype=torch.long, device=device)
    nan = torch.full((n_queries,), torch.nan, dtype=torch.float64, device=device)
    return Ranking(
        relevant=zeros,
        above=zeros,
        tied=zeros,
        tied_relevant=zeros,
        average_precision=nan,
        r_precision=nan,
        top_indices=torch.full((n_queries, width), -1, device=device),
        top_scores=torch.full((n_queries, width), -INF, dtype=torch.float64, device=device),
        votes=torch.zeros(n_queries, 0, dtype=torch.float64, device=device) if votes else None,
        vote_labels=zeros[:0] if votes else None,
    )


@dataclass
class _Problem:
    """What every screen and the float64 pass share: labels sorted, relevant ranges, excluded ids."""

    query_labels: Tensor
    labels: Tensor  # the gallery's, sorted
    excluded: Tensor | None  # per query, sorted gallery positions sharing its id, -1 padded
    metric: Metric

    def __post_init__(self) -> None:
        self.range_start = torch.searchsorted(self.labels, self.query_labels, side="left")
        self.range_length = (
            torch.searchsorted(self.labels, self.query_labels, side="right") - self.range_start
        )
        self.relevant = self.range_length
        if self.excluded is not None:
            stop = (self.range_start + self.range_length)[:, None]
            inside = (self.excluded >= self.range_start[:, None]) & (self.excluded < stop)
            self.relevant = self.range_length - inside.sum(1)
        self.most_relevant = int(self.relevant.max()) if len(self.relevant) else 0
        self.offsets = torch.arange(max(1, int(self.range_length.max()) if len(self.relevant) else 1))
        self.offsets = self.offsets.to(self.labels.device)

    def relevant_scores(self, block: Tensor, rows: Tensor | slice) -> Tensor:
        """Each row's scores over its label's column range, ``-inf`` past the range."""
        columns = (self.range_start[rows, None] + self.offsets).clamp_(max=max(block.shape[1] - 1, 0))
        outside = self.offsets >= self.range_length[rows, None]
        return block.gather(1, columns).masked_fill_(outside, -INF)

    def exclude(self, block: Tensor, rows: Tensor | slice) -> None:
        """Set the rows' same-id items to ``-inf`` in place."""
        if self.excluded is None:
            return
        positions = self.excluded[rows]
        row, slot = torch.nonzero(positions >= 0, as_tuple=True)
        block[row, positions[row, slot]] = -INF

    def listed_labels(self, columns: Tensor) -> Tensor:
        """Labels of listed items (sorted gallery positions; ``-1`` padding reads any valid label)."""
        return self.labels[columns.clamp(min=0, max=max(len(self.labels) - 1, 0))]

    def hits(self, columns: Tensor, scores: Tensor, rows: Tensor | slice = slice(None)) -> Tensor:
        """Whether each listed item (sorted gallery position) of ``rows`` is relevant to its query."""
        return (self.listed_labels(columns) == self.query_labels[rows, None]) & (scores > -INF)


def _torch_screen(
    queries: Tensor,
    gallery: Tensor,
    problem: _Problem,
    width: int,
    tolerance: Tensor,
    chunk_size: int | None,
    block_bytes: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(columns, scores, above, window)`` from float32 blocks. Per query: its ``width`` best items (sorted
    gallery positions and screen scores) and the items above its best relevant score + tolerance; and
    ``window`` ``(2, P)``: (query, sorted gallery position) of every item within ± tolerance of a query's
    best relevant score, for queries with more than that item there."""
    n_gallery = len(gallery)
    per_group = group_size(n_gallery, width)
    padded = max(1, -(-n_gallery // per_group)) * per_group
    gallery = F.pad(gallery, (0, 0, 0, padded - n_gallery))
    if chunk_size is None:
        chunk_size = max(1, block_bytes // ((padded + padded // per_group) * gallery.element_size()))
    chunk_size = min(chunk_size, max(1, len(queries)))
    # Euclidean: 2<q, g> - |g|² ranks a row as -|q - g|² does (|q|² is constant along the row).
    shift = -gallery.square().sum(1) if problem.metric == "euclidean" else None
    if shift is not None:
        shift[n_gallery:] = -INF
    block_buffer = gallery.new_empty(chunk_size * padded)
    results, pairs = [], []
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = queries[rows]
        block = block_buffer[: len(chunk) * padded].view(len(chunk), padded)
        if shift is None:
            torch.mm(chunk, gallery.T, out=block)
            block[:, n_gallery:] = -INF
        else:
            torch.addmm(shift, chunk, gallery.T, alpha=2, out=block)
        problem.exclude(block, rows)
        relevant_scores = problem.relevant_scores(block, rows)
        low, high = _window(relevant_scores.amax(1), tolerance[rows], block.dtype)
        maxima = row_group_maxima(block, per_group)
        columns, scores = best_of(*row_candidates(block, maxima, width), min(width, padded))
        above, row, column = row_windows(block, maxima, columns, scores, low[:, 0], high[:, 0])
        # Pairs of rows with more than their best relevant item in the window.
        crowded = torch.bincount(row, minlength=len(chunk)) > 1
        keep = crowded[row]
        pairs.append(torch.stack([row[keep] + start, column[keep]]))
        results.append((columns, scores, above.long()))
    columns, scores, above = (torch.cat(parts) for parts in zip(*results, strict=True))
    return columns, scores, above, torch.cat(pairs, 1)


def _window(best: Tensor, tolerance: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(low, high)`` ``(rows, 1)``: best relevant score ± tolerance; lone queries (best = -inf) get an
    empty window above everything."""
    best = best.double()
    low = torch.where(best > -INF, best - tolerance, INF)
    return low[:, None].to(dtype), (best + tolerance)[:, None].to(dtype)


def _halving_pays(dim: int, depth: int) -> bool:
    """Whether scoring each pair once (``symmetric.leave_one_out_screen``) beats scoring whole rows.

    It halves the matrix product (cost ∝ ``dim``) but adds a top-list search per column of every strip.
    Measured for the previous (inexact) engine on 2 cores, 40k–60k items: 512-d with R ≤ 11 ran 35–40 %
    faster, 512-d with R ≤ 59 10 % faster, 256-d and 128-d with R ≤ 99 30 % and 85 % slower; with this
    engine, SOP (512-d, R ≤ 11) measured about 20 % faster.
    """
    return dim >= 8 * depth


def _half_screen(
    gallery: Tensor,
    problem: _Problem,
    order: Tensor,
    width: int,
    tolerance: Tensor,
    chunk_size: int | None,
    block_bytes: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``_torch_screen``'s facts in leave-one-out with unique ids, each pair scored once (``symmetric``);
    rows back in the caller's order, Euclidean scores as -|q - g|² in full."""
    per_group = group_size(len(gallery), width)
    padded = F.pad(gallery, (0, 0, 0, max(1, -(-len(gallery) // per_group)) * per_group - len(gallery)))
    # chunk_size rows of the first (widest) strip, or strips of 4/5 of block_bytes (+1/5 for group maxima).
    cells = chunk_size * len(padded) if chunk_size else block_bytes * 4 // (5 * padded.element_size())
    columns, scores, above, window = leave_one_out_screen(
        padded, problem.labels, problem.metric, per_group, width, cells, tolerance[order]
    )
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return columns[inverse], scores[inverse], above[inverse], torch.stack([order[window[0]], window[1]])


def _faiss_screen(
    queries: Tensor, gallery: Tensor, problem: _Problem, depth: int, tolerance: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``_torch_screen``'s facts from a faiss flat-index search; ``above`` is -1 (unknown: the query is
    re-scored) where the first hit or the items within tolerance of it may lie past the searched list."""
    n_gallery = len(gallery)
    extra = 0 if problem.excluded is None else problem.excluded.shape[1]
    searched = min(n_gallery, depth + extra)
    scores, columns = faiss_flat_search(queries, gallery, searched, problem.metric)
    last = scores[:, -1]  # the lowest score searched: anything unlisted is at most this (same-id items too)
    scores = scores.masked_fill(columns < 0, -INF)
    if problem.excluded is not None:
        same_id = (columns[:, :, None] == problem.excluded[:, None, :]).any(2) & (columns >= 0)
        scores = scores.masked_fill(same_id, -INF)
    scores, sorted_order = torch.sort(scores, dim=1, descending=True, stable=True)
    columns = columns.gather(1, sorted_order)
    hits = problem.hits(columns, scores)
    found_hit = hits.any(1)
    best = scores.gather(1, hits.byte().argmax(1, keepdim=True))[:, 0].masked_fill(~found_hit, -INF)
    low, high = _window(best, tolerance, scores.dtype)
    inside = (scores >= low) & (scores <= high)
    above = (scores > high).sum(1)
    # Unknown where the list may end inside the window or before the first hit: above = -1.
    closed = found_hit & ((last < low[:, 0]) | (searched == n_gallery))
    row, slot = torch.nonzero(inside & closed[:, None], as_tuple=True)
    return columns, scores, above.masked_fill(~closed, -1), torch.stack([row, columns[row, slot]])


def _pad_columns(columns: Tensor, scores: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Pad top lists to ``width`` columns with position -1 and score ``-inf``."""
    missing = width - columns.shape[1]
    if missing <= 0:
        return columns, scores
    return F.pad(columns, (0, missing), value=-1), F.pad(scores, (0, missing), value=-INF)


def _unclear(
    scores: Tensor, hits: Tensor, labels: Tensor, relevant: Tensor, tolerance: Tensor, votes: bool
) -> Tensor:
    """Queries whose measures depend on a screen comparison closer than ``tolerance`` (module docstring).

    Reordering items of equal relevance changes no measure, so a close pair matters only between items of
    different relevance: inside the first R, or anywhere along the chain of close pairs from position R
    (which may run past the list: then the query is unclear too). ``votes``: the same chain rule on labels
    from the first position.
    """
    close = (scores[:, :-1] - scores[:, 1:]).double() <= tolerance[:, None]
    positions = torch.arange(close.shape[1], device=scores.device)
    differ = hits[:, :-1] != hits[:, 1:]
    unclear = (close & differ & (positions < (relevant - 1)[:, None])).any(1)
    unclear |= _unclear_chain(close, differ, (relevant - 1).clamp(min=0))
    unclear &= relevant > 0
    if votes:
        unclear |= _unclear_chain(close, labels[:, :-1] != labels[:, 1:], torch.zeros_like(relevant))
    return unclear


def _unclear_chain(close: Tensor, differ: Tensor, start: Tensor) -> Tensor:
    """Whether the run of close pairs from position ``start`` holds a differing pair or reaches the end."""
    from_start = torch.arange(close.shape[1], device=close.device) >= start[:, None]
    chain = (close | ~from_start).cumprod(1).bool() & from_start
    return (chain & differ).any(1) | chain[:, -1]


@dataclass
class _Ranked:
    """The mutable per-query fields while screen results are replaced by float64 ones."""

    columns: Tensor
    scores: Tensor
    hits: Tensor
    above: Tensor
    tied: Tensor
    tied_relevant: Tensor
    boundary_tied: Tensor
    boundary_relevant: Tensor
    vote_codes: Tensor | None
    votes: Tensor | None
    vote_labels: Tensor | None

    @classmethod
    def from_screen(
        cls, problem: _Problem, columns: Tensor, scores: Tensor, hits: Tensor, above: Tensor, votes: bool
    ) -> _Ranked:
        """Fields of queries whose screen is clear: no ties that matter, groups within the list."""
        last = (problem.relevant - 1).clamp(min=0)[:, None]
        in_boundary = scores == scores.gather(1, last)
        ones = torch.ones_like(above)
        vote_labels = vote_codes = votes_matrix = None
        if votes:
            vote_labels, vote_codes = torch.unique(problem.labels, return_inverse=True)
            nearest = columns[:, :1]
            votes_matrix = vote_shares(nearest >= 0, vote_codes[nearest.clamp(min=0)], len(vote_labels))
        return cls(
            columns=columns,
            scores=scores,
            hits=hits,
            above=above,
            tied=ones,
            tied_relevant=ones.clone(),
            boundary_tied=in_boundary.sum(1),
            boundary_relevant=(in_boundary & hits).sum(1),
            vote_codes=vote_codes,
            votes=votes_matrix,
            vote_labels=vote_labels,
        )

    def finish(self, problem: _Problem, order: Tensor) -> Ranking:
        """Expected AP@R and R-Precision from the lists, and the ``Ranking`` in the caller's positions."""
        average_precision, r_precision = [], []
        for rows in torch.arange(len(self.columns), device=self.columns.device).split(ROWS_PER_PASS):
            ap, rp = expected_precisions(
                self.scores[rows],
                self.hits[rows],
                problem.relevant[rows],
                self.boundary_tied[rows],
                self.boundary_relevant[rows],
            )
            average_precision.append(ap)
            r_precision.append(rp)
        empty = self.scores.new_zeros(0, dtype=torch.float64)
        return Ranking(
            relevant=problem.relevant,
            above=self.above,
            tied=self.tied,
            tied_relevant=self.tied_relevant,
            average_precision=torch.cat(average_precision) if average_precision else empty,
            r_precision=torch.cat(r_precision) if r_precision else empty,
            top_indices=torch.where(self.columns >= 0, order[self.columns.clamp(min=0)], -1),
            top_scores=self.scores,
            votes=self.votes,
            vote_labels=self.vote_labels,
        )


def _rescore_lists(
    ranked: _Ranked,
    unclear: Tensor,
    query_embeddings: Tensor,
    sorted_gallery: Tensor,
    problem: _Problem,
    tolerance: Tensor,
    votes: bool,
) -> Tensor:
    """Re-order the top lists of ``unclear`` queries by float64 scores; return the queries that stay
    unclear: those where an unlisted item could still reach their first R (or, with ``votes``, their
    nearest item), i.e. where that score is not above the list's last screen score + tolerance. Lists of
    settled queries and their boundary groups are then exact.

    Only items within tolerance of a listed neighbour are re-scored: every other item is more than twice
    the screen error away from both neighbours, so its screen score keeps its place (and ties nothing).
    """
    rows = torch.nonzero(unclear).flatten()
    still = torch.zeros_like(unclear)
    for part in rows.split(ROWS_PER_PASS):
        columns, scores = ranked.columns[part], ranked.scores[part].clone()
        close = (scores[:, :-1] - scores[:, 1:]) <= tolerance[part, None]
        near = F.pad(close, (0, 1)) | F.pad(close, (1, 0))
        row, slot = torch.nonzero(near & (columns >= 0), as_tuple=True)
        scores[row, slot] = _pair_scores(
            query_embeddings, part[row], sorted_gallery, columns[row, slot], problem
        )
        scores, reorder = scores.sort(dim=1, descending=True, stable=True)
        columns = columns.gather(1, reorder)
        floor = ranked.scores[part, -1] + tolerance[part]  # no unlisted item scores higher
        relevant = problem.relevant[part]
        boundary = scores.gather(1, (relevant - 1).clamp(min=0)[:, None])
        settled = boundary[:, 0] > floor
        if votes:
            settled &= scores[:, 0] > floor
        still[part[~settled]] = True
        part, columns, scores, boundary = part[settled], columns[settled], scores[settled], boundary[settled]
        hits = problem.hits(columns, scores, part)
        in_boundary = scores == boundary
        ranked.columns[part], ranked.scores[part], ranked.hits[part] = columns, scores, hits
        ranked.boundary_tied[part] = in_boundary.sum(1)
        ranked.boundary_relevant[part] = (in_boundary & hits).sum(1)
        if ranked.votes is not None:
            nearest = (scores == scores[:, :1]) & (columns >= 0)
            codes = ranked.vote_codes[columns.clamp(min=0)]
            ranked.votes[part] = vote_shares(nearest, codes, ranked.votes.shape[1])
    return still


def _pair_scores(
    queries: Tensor, rows: Tensor, gallery: Tensor, columns: Tensor, problem: _Problem
) -> Tensor:
    """Float64 similarities ``(P,)`` of the pairs (``queries[rows[i]]``, ``gallery[columns[i]]``): cosine, or
    -|q - g|² as 2<q, g> - |g|² - |q|²; exact duplicates score identically. Pairs are gathered a block of
    ``BLOCK_BYTES`` at a time, so wide embeddings do not multiply the memory by their width; where the pairs
    fill more than 1/``DENSE_PAIRS`` of their rows, whole rows are scored by matrix products instead."""
    distinct_rows = torch.unique(rows)
    if len(rows) * DENSE_PAIRS > len(distinct_rows) * len(gallery):
        return _dense_pair_scores(queries, rows, gallery, columns, problem.metric)
    pairs_per_block = max(1, BLOCK_BYTES // (16 * max(queries.shape[1], 1)))
    scores = []
    for part_rows, part_columns in zip(
        rows.split(pairs_per_block), columns.split(pairs_per_block), strict=True
    ):
        query, item = queries[part_rows].double(), gallery[part_columns].double()
        dot = (query * item).sum(-1)
        if problem.metric == "cosine":
            scores.append(dot / (query.norm(dim=-1) * item.norm(dim=-1)).clamp(min=1e-300))
        else:
            scores.append(2 * dot - item.square().sum(-1) - query.square().sum(-1))
    return torch.cat(scores) if scores else queries.new_zeros(0, dtype=torch.float64)


def _resolve_windows(
    ranked: _Ranked, window: Tensor, query_embeddings: Tensor, sorted_gallery: Tensor, problem: _Problem
) -> None:
    """Place each query's best relevant item among the items of its screen window (``(2, P)`` pairs of
    query and sorted gallery position) by their float64 scores: ``above``, ``tied``, ``tied_relevant``."""
    crowded = torch.bincount(window[0], minlength=len(ranked.above)) > 1
    rows, columns = window[:, crowded[window[0]]]
    if rows.numel() == 0:
        return
    scores = _pair_scores(query_embeddings, rows, sorted_gallery, columns, problem)
    relevant = problem.labels[columns] == problem.query_labels[rows]  # same-id items are never in a window
    best = torch.full((len(ranked.above),), -INF, dtype=torch.float64, device=scores.device)
    best.scatter_reduce_(0, rows, scores.masked_fill(~relevant, -INF), "amax")
    best = best[rows]
    count = torch.zeros_like(ranked.above)
    involved = torch.unique(rows)
    ranked.above[involved] += count.index_add(0, rows, ((scores > best) & ~relevant).long())[involved]
    ranked.tied[involved] = count.index_add(0, rows, (scores == best).long())[involved]
    ranked.tied_relevant[involved] = count.index_add(0, rows, ((scores == best) & relevant).long())[involved]


def _exact_rows(
    ranked: _Ranked,
    rows: Tensor,
    query_embeddings: Tensor,
    sorted_gallery: Tensor,
    problem: _Problem,
    width: int,
    block_bytes: int,
) -> None:
    """Replace the screen's fields of ``rows`` by those of whole float64 rows (module docstring)."""
    n_gallery = len(sorted_gallery)
    chunk_size = max(1, block_bytes // (3 * max(n_gallery, 1) * 8))
    blocks = _float64_blocks(query_embeddings, rows, sorted_gallery, problem.metric, chunk_size)
    for part, queries, distinct_scores, inverse in blocks:
        block = distinct_scores[:, inverse]
        problem.exclude(block, part)
        relevant_scores = problem.relevant_scores(block, part)
        best = relevant_scores.amax(1, keepdim=True)
        ranked.above[part] = (block > best).sum(1)
        ranked.tied[part] = (block == best).sum(1)
        ranked.tied_relevant[part] = (relevant_scores == best).sum(1)
        scores, columns = block.topk(min(width, n_gallery), dim=1)
        columns, scores = _pad_columns(columns.masked_fill(scores == -INF, -1), scores, width)
        boundary = scores.gather(1, (problem.relevant[part] - 1).clamp(min=0)[:, None])
        ranked.boundary_tied[part] = (block == boundary).sum(1)
        ranked.boundary_relevant[part] = (relevant_scores == boundary).sum(1)
        if ranked.votes is not None:
            nearest = (block == scores[:, :1]) & (block > -INF)
            codes = ranked.vote_codes.expand_as(nearest)
            ranked.votes[part] = vote_shares(nearest, codes, ranked.votes.shape[1])
        if problem.metric == "euclidean":
            scores = scores - queries.square().sum(1, keepdim=True)
        ranked.columns[part] = columns
        ranked.scores[part] = scores
        ranked.hits[part] = problem.hits(columns, scores, part)


def _dense_pair_scores(
    queries: Tensor, rows: Tensor, gallery: Tensor, columns: Tensor, metric: Metric
) -> Tensor:
    """:func:`_pair_scores` from float64 matrix products of whole rows (as :func:`_exact_rows` scores
    them, so exact duplicates tie), ``BLOCK_BYTES`` of scores at a time."""
    distinct_rows, row_slots = torch.unique(rows, return_inverse=True)
    scores = torch.empty(len(rows), dtype=torch.float64, device=queries.device)
    per_block = max(1, BLOCK_BYTES // (8 * len(gallery)))
    start = 0
    for part, block_queries, block, inverse in _float64_blocks(
        queries, distinct_rows, gallery, metric, per_block
    ):
        inside = (row_slots >= start) & (row_slots < start + len(part))
        slots = row_slots[inside] - start
        pair_scores = block[slots, inverse[columns[inside]]]
        if metric == "euclidean":
            pair_scores = pair_scores - block_queries.square().sum(1)[slots]
        scores[inside] = pair_scores
        start += len(part)
    return scores


def _float64_blocks(
    query_embeddings: Tensor, rows: Tensor, gallery: Tensor, metric: Metric, rows_per_block: int
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """For each block of ``rows``: ``(rows, their float64 queries, scores, inverse)``, the scores
    ``(rows, G')`` against the G' distinct float64 gallery items (cosine, or 2<q, g> - |g|² for Euclidean:
    without the row's own -|q|²) and ``inverse`` mapping each gallery item to its distinct column, so exact
    duplicates score identically."""
    unique, inverse = torch.unique(_prepare_float64(gallery, metric), dim=0, return_inverse=True)
    shift = -unique.square().sum(1) if metric == "euclidean" else None
    for part in rows.split(rows_per_block):
        queries = _prepare_float64(query_embeddings[part], metric)
        scores = queries @ unique.T if shift is None else torch.addmm(shift, queries, unique.T, alpha=2)
        yield part, queries, scores, inverse


def vote_shares(nearest: Tensor, codes: Tensor, n_labels: int) -> Tensor:
    """``(rows, n_labels)`` float64: each row's vote of 1/t for the label code (``codes``, same shape as
    ``nearest``) of each of its t ``nearest`` cells; rows with none vote nothing."""
    row, cell = torch.nonzero(nearest, as_tuple=True)
    votes = torch.zeros(len(nearest), n_labels, dtype=torch.float64, device=nearest.device)
    votes.index_put_(
        (row, codes[row, cell]), torch.ones(len(row), dtype=torch.float64, device=row.device), True
    )
    return votes / nearest.sum(1, keepdim=True).clamp(min=1)


def _prepare_float64(embeddings: Tensor, metric: Metric) -> Tensor:
    """Float64 copy of ``embeddings``, L2-normalised in float64 for ``"cosine"``."""
    embeddings = embeddings.detach().double()
    return F.normalize(embeddings, dim=1) if metric == "cosine" else embeddings


@contextmanager
def _full_float32_precision() -> Iterator[None]:
    """Float32 matrix products in full float32 (no TF32 or bf16 passes), as ``screen_tolerance`` assumes."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
