"""The exact ``Ranking`` with the gallery sharded across processes (``torch.distributed``), as in DINOv2's
k-NN evaluation: each rank keeps its share of the gallery and of the queries; query blocks are
all-gathered and every rank scores them against its share; the per-shard results are merged exactly.

Every decision is taken on one float64 score per pair (``pair_scores``: row-wise numpy arithmetic, so a pair
scores the same bits on any rank, in any block, and exact duplicates tie), and every merged quantity is
either a sum of per-shard counts or read from merged lists where they are provably complete. So the merged
``Ranking`` depends only on the pairs' scores, never on how the gallery is cut: W processes give exactly
what one gives. Per query, in three steps:

1. **Best relevant score** B: each shard scores its own relevant items of the query (a label range, at most
   max R items) and B is the all-reduced maximum: exact, and known before the screen.
2. **Screen**: each shard scores the block in float32 (``screen_tolerance``) and counts the items strictly
   above B and equal to it (those within the screen's error of B re-scored in float64): ``above``, ``tied``
   and ``tied_relevant`` are sums over shards. It also lists its ``width`` best items, re-scored in float64,
   with a *floor*: no unlisted item of the shard scores above it (the lowest listed score + twice δ).
3. **Merge**: the shards' lists are merged; items above the highest floor are every gallery item above it,
   in exact order. Where those hold the first R items (the tie group of the R-th included) and the nearest
   item, AP@R, R-Precision, the 1-NN votes and the top list are read from them. Otherwise (ties or near
   ties straddling a floor: rare, except on lattice-valued data) each shard scores the query's whole row in
   float64, the exact top lists are merged and the R-th and first scores' tie groups counted by all-reduce.

Memory per rank: its shard (float32, prepared), one ``block_bytes`` score block, and O(block × W × width)
lists; the gallery's labels and ids are all-gathered (O(N) integers, to count R).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lightning_dml.metrics.knn import (
    BLOCK_BYTES,
    Metric,
    check_search_inputs,
    exclude_positions,
    matching_positions,
    prepare_embeddings,
)
from lightning_dml.metrics.ranking import LIST_MARGIN, Ranking, screen_tolerance, vote_shares
from lightning_dml.metrics.retrieval import count_relevant
from lightning_dml.metrics.ties import expected_precisions
from lightning_dml.metrics.topm import best_of, group_size, row_candidates, row_group_maxima, row_windows

INF = float("inf")
#: Queries each rank contributes to one all-gathered block.
QUERIES_PER_STEP = 4096
#: Bytes of the float64 pair vectors ``pair_scores`` holds at a time.
PAIR_BLOCK_BYTES = 32 * 2**20


def pair_scores(queries: Tensor, rows: Tensor, gallery: Tensor, columns: Tensor, metric: Metric) -> Tensor:
    """Float64 similarities ``(P,)`` of the pairs (``queries[rows[i]]``, ``gallery[columns[i]]``): cosine of
    float64 L2-normalised rows, or -|q - g|². Numpy reduces each pair on its own (pairwise summation), so a
    pair scores the same bits whatever else is computed with it, and exact duplicates tie. Pairs are taken
    ``PAIR_BLOCK_BYTES`` at a time."""
    per_block = max(1, PAIR_BLOCK_BYTES // (48 * max(queries.shape[1], 1)))
    scores = []
    for start in range(0, len(rows), per_block):
        q = queries[rows[start : start + per_block]].detach().cpu().double().numpy()
        g = gallery[columns[start : start + per_block]].detach().cpu().double().numpy()
        if metric == "cosine":
            q /= np.maximum(np.sqrt((q * q).sum(1)), 1e-300)[:, None]
            g /= np.maximum(np.sqrt((g * g).sum(1)), 1e-300)[:, None]
            q *= g
            scores.append(q.sum(1))
        else:
            q -= g
            scores.append(-np.square(q, out=q).sum(1))
    return torch.from_numpy(np.concatenate(scores) if scores else np.zeros(0)).to(queries.device)


class Ranks:
    """The collectives of one process group; the identity in a single process."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.group = group
        self.size = dist.get_world_size(group) if self.active else 1
        self.rank = dist.get_rank(group) if self.active else 0

    def stack(self, tensor: Tensor) -> Tensor:
        """``(W, *shape)``: every rank's ``tensor`` (same shape on every rank)."""
        if self.size == 1:
            return tensor[None]
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.stack(parts)

    def cat(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` concatenated in rank order (lengths may differ)."""
        if self.size == 1:
            return tensor
        lengths = self.stack(torch.tensor([len(tensor)], device=tensor.device))[:, 0].tolist()
        padded = F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, max(lengths) - len(tensor)))
        return torch.cat([part[:length] for part, length in zip(self.stack(padded), lengths, strict=True)])

    def reduce(self, tensor: Tensor, op: str) -> Tensor:
        """``tensor`` summed (``"sum"``) or maximised (``"max"``) over ranks, elementwise."""
        if self.size == 1:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.group)
        return tensor


@dataclass
class _Shard:
    """One rank's gallery share, label-sorted, and the facts every step needs."""

    items: Tensor  # raw embeddings, label-sorted (for float64 scores)
    screen: Tensor  # prepared float32, zero-padded to a multiple of ``per_group`` rows
    labels: Tensor
    ids: Tensor
    shift: Tensor | None  # -|g|² (Euclidean), -inf on padding
    per_group: int
    metric: Metric

    def __len__(self) -> int:
        return len(self.labels)


def sharded_rank(
    query_embeddings: Tensor,
    query_labels: Tensor,
    query_ids: Tensor,
    gallery_embeddings: Tensor,
    gallery_labels: Tensor,
    gallery_ids: Tensor,
    *,
    metric: Metric = "cosine",
    top_k: int = 0,
    votes: bool = False,
    group: dist.ProcessGroup | None = None,
    queries_per_step: int = QUERIES_PER_STEP,
    block_bytes: int = BLOCK_BYTES,
) -> Ranking:
    """The exact ``Ranking`` of this rank's queries against the gallery all ranks share (module docstring).

    Every rank of ``group`` calls it with its own queries and its own gallery share; ids identify items
    across ranks (a gallery item with the query's id is left out: leave-one-out passes the same items and
    dataset indices on both sides) and must not repeat within a side. Equal to ``ranking.rank`` of all
    queries against the whole gallery, except that ``top_indices`` holds gallery *ids* (``-1`` past the
    items), lists end where their order is no longer certain (at least ``top_k`` and R items are listed), and
    ``vote_labels`` are all the gallery's labels.
    """
    check_search_inputs(
        query_embeddings, gallery_embeddings, metric, query_ids, gallery_ids, "torch", queries_per_step
    )
    ranks = Ranks(group)
    device = query_embeddings.device
    all_labels, all_ids = ranks.cat(gallery_labels.to(device)), ranks.cat(gallery_ids.to(device))
    relevant = count_relevant(query_labels.to(device), all_labels, query_ids.to(device), all_ids)
    most_relevant = int(ranks.reduce(F.pad(relevant, (0, 1)).max(0, keepdim=True).values, "max"))
    width = max(most_relevant + LIST_MARGIN, top_k, 2)
    vote_labels = torch.unique(all_labels) if votes else None
    # One dtype on both sides (float32 at least), so that equal vectors stay equal and score alike.
    dtype = torch.promote_types(
        torch.promote_types(query_embeddings.dtype, gallery_embeddings.dtype), torch.float32
    )
    shard = _prepare_shard(
        gallery_embeddings.to(dtype), gallery_labels.to(device), gallery_ids.to(device), metric, width
    )
    steps = int(ranks.reduce(torch.tensor([-(-len(query_labels) // queries_per_step)], device=device), "max"))
    parts = []
    for step in range(steps):
        rows = slice(step * queries_per_step, (step + 1) * queries_per_step)
        block = _Block.gather(
            ranks,
            query_embeddings[rows].to(dtype),
            query_labels[rows],
            query_ids[rows],
            relevant[rows],
            queries_per_step,
        )
        result = _rank_block(ranks, shard, block, width, top_k, vote_labels, block_bytes)
        mine = (block.owner == ranks.rank) & block.valid
        parts.append({key: value[mine] for key, value in result.items()})
    return _ranking(parts, relevant, width, device, vote_labels)


@dataclass
class _Block:
    """The queries of one step, all-gathered from every rank (padding rows marked invalid)."""

    embeddings: Tensor
    labels: Tensor
    ids: Tensor
    relevant: Tensor
    owner: Tensor
    valid: Tensor

    @classmethod
    def gather(
        cls, ranks: Ranks, embeddings: Tensor, labels: Tensor, ids: Tensor, relevant: Tensor, size: int
    ) -> _Block:
        """Every rank's ``size`` (padded) queries of this step, rank by rank."""
        missing = size - len(labels)
        columns = [F.pad(embeddings, (0, 0, 0, missing))]
        columns += [F.pad(values.long(), (0, missing)) for values in (labels, ids, relevant)]
        valid = F.pad(torch.ones(len(labels), dtype=torch.long, device=labels.device), (0, missing))
        embeddings, labels, ids, relevant, valid = (
            ranks.stack(column).flatten(0, 1) for column in (*columns, valid)
        )
        owner = torch.arange(ranks.size, device=labels.device).repeat_interleave(size)
        return cls(embeddings, labels, ids, relevant, owner, valid.bool())


def _prepare_shard(embeddings: Tensor, labels: Tensor, ids: Tensor, metric: Metric, width: int) -> _Shard:
    """This rank's share sorted by label, with its float32 screen copy."""
    order = torch.argsort(labels, stable=True)
    screen = prepare_embeddings(embeddings, metric)[order]
    per_group = group_size(len(screen), width)
    padded = max(1, -(-len(screen) // per_group)) * per_group
    screen = F.pad(screen, (0, 0, 0, padded - len(screen)))
    shift = None
    if metric == "euclidean":
        shift = -screen.square().sum(1)
        shift[len(order) :] = -INF
    return _Shard(embeddings[order], screen, labels[order], ids[order], shift, per_group, metric)


def _rank_block(
    ranks: Ranks,
    shard: _Shard,
    block: _Block,
    width: int,
    top_k: int,
    vote_labels: Tensor | None,
    block_bytes: int,
) -> dict[str, Tensor]:
    """The merged per-query fields of one all-gathered block (the same on every rank)."""
    best = ranks.reduce(_best_relevant(shard, block), "max")
    counts, lists = _screen(shard, block, best, width, block_bytes)
    counts = ranks.reduce(counts, "sum")
    merged, listed, floor = _merge(*(ranks.stack(values) for values in lists), block, width, vote_labels)
    needed = block.relevant.clamp(min=max(top_k, int(vote_labels is not None)))
    unsure = torch.nonzero((listed < needed) & (floor > -INF) & block.valid).flatten()
    if len(unsure):
        exact = _exact_rows(ranks, shard, block, unsure, width, vote_labels, block_bytes)
        for key, value in exact.items():
            merged[key][unsure] = value
    return {"above": counts[0], "tied": counts[1], "tied_relevant": counts[2]} | merged


def _best_relevant(shard: _Shard, block: _Block) -> Tensor:
    """``(Q,)`` float64: each query's best score among this shard's relevant items (-inf if none), every
    relevant pair scored in float64."""
    start = torch.searchsorted(shard.labels, block.labels, side="left")
    length = torch.searchsorted(shard.labels, block.labels, side="right") - start
    offsets = torch.arange(int(length.max()) if len(length) else 0, device=start.device)
    row, slot = torch.nonzero((offsets < length[:, None]) & block.valid[:, None], as_tuple=True)
    column = start[row] + offsets[slot]
    keep = shard.ids[column] != block.ids[row]
    row, column = row[keep], column[keep]
    scores = pair_scores(block.embeddings, row, shard.items, column, shard.metric)
    best = torch.full((len(block.labels),), -INF, dtype=torch.float64, device=start.device)
    return best.scatter_reduce_(0, row, scores, "amax")


def _screen(
    shard: _Shard, block: _Block, best: Tensor, width: int, block_bytes: int
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """This shard's ``(counts, lists)`` for the block: counts ``(3, Q)`` of items above ``best``, equal to it,
    and equal and relevant (float32 scores within the screen's error of ``best`` decided in float64); lists
    ``(ids, labels, scores)`` ``(Q, width)`` of its best items, float64 scores best first, and ``floor``
    ``(Q,)``: no unlisted item scores above it (-inf when every item is listed)."""
    n_queries, n_items, padded = len(block.labels), len(shard), len(shard.screen)
    queries = prepare_embeddings(block.embeddings, shard.metric)
    tolerance = 2 * screen_tolerance(queries, shard.screen[:n_items], shard.metric)
    target = best if shard.shift is None else best + queries.double().square().sum(1)
    known = best > -INF  # lone queries (R = 0) count nothing: their window lies above everything
    low = torch.where(known, target - tolerance, INF).float()[:, None]
    high = torch.where(known, target + tolerance, INF).float()[:, None]
    excluded = matching_positions(block.ids, shard.ids)
    counts = torch.zeros(3, n_queries, dtype=torch.long, device=queries.device)
    columns, screened = [], []
    chunk = max(1, min(n_queries, block_bytes // (max(padded, 1) * 6)))
    for start in range(0, n_queries, chunk):
        rows = slice(start, start + chunk)
        scores = queries[rows] @ shard.screen.T
        if shard.shift is None:
            scores[:, n_items:] = -INF
        else:
            scores = scores.mul_(2).add_(shard.shift)  # 2<q, g> - |g|²: -|q - g|² + |q|²
        exclude_positions(scores, excluded[rows])
        maxima = row_group_maxima(scores, shard.per_group)
        found = best_of(*row_candidates(scores, maxima, min(width, padded)), min(width, padded))
        columns.append(found[0])
        screened.append(found[1])
        above, row, column = row_windows(scores, maxima, *found, low[rows, 0], high[rows, 0])
        counts[0, rows] = above.long()
        row = row + start
        exact = pair_scores(block.embeddings, row, shard.items, column, shard.metric)
        same = exact == best[row]
        relevant = shard.labels[column] == block.labels[row]
        for index, counted in enumerate((exact > best[row], same, same & relevant)):
            counts[index] += torch.bincount(row[counted], minlength=n_queries)
    return counts, _exact_lists(shard, block, torch.cat(columns), torch.cat(screened), tolerance, width)


def _exact_lists(
    shard: _Shard, block: _Block, columns: Tensor, screened: Tensor, tolerance: Tensor, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The screen's lists re-scored in float64 and re-sorted: ``(ids, labels, scores, floor)``. An unlisted
    item scores at most δ above the last screen score, itself at most δ above the lowest float64 one."""
    present = screened > -INF
    row, slot = torch.nonzero(present, as_tuple=True)
    scores = torch.full(columns.shape, -INF, dtype=torch.float64, device=columns.device)
    scores[row, slot] = pair_scores(block.embeddings, row, shard.items, columns[row, slot], shard.metric)
    complete = ~present.all(1) | (len(shard) <= columns.shape[1])
    floor = torch.where(complete, -INF, scores.masked_fill(~present, INF).amin(1) + tolerance)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    columns = columns.gather(1, order).clamp(max=max(len(shard) - 1, 0))
    ids = torch.where(scores > -INF, shard.ids[columns], -1) if len(shard) else torch.full_like(columns, -1)
    labels = shard.labels[columns] if len(shard) else torch.full_like(columns, -1)
    return (*(_pad(values, width, fill) for values, fill in ((ids, -1), (labels, -1), (scores, -INF))), floor)


def _pad(values: Tensor, width: int, fill: float) -> Tensor:
    """``values`` cut or padded with ``fill`` to ``width`` columns."""
    return F.pad(values, (0, max(0, width - values.shape[1])), value=fill)[:, :width]


def _merge(
    ids: Tensor, labels: Tensor, scores: Tensor, floors: Tensor, block: _Block, width: int, vote_labels
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Merge the shards' lists ``(W, Q, width)`` and floors ``(W, Q)``: ``(fields, listed, floor)``. Items
    above the highest floor are every gallery item above it, in exact order; ``listed`` counts them. The
    fields (``_list_fields``) are read from those items; they hold where ``listed`` reaches R and the
    nearest item, so that the R-th item's and the nearest item's tie groups lie above the floor."""
    floor = floors.amax(0)
    ids, labels, scores = (values.permute(1, 0, 2).flatten(1) for values in (ids, labels, scores))
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    certain = scores > floor[:, None]
    scores = scores.masked_fill(~certain, -INF)
    ids, labels = ids.gather(1, order).masked_fill(~certain, -1), labels.gather(1, order)
    return _list_fields(ids, labels, scores, block, width, vote_labels), certain.sum(1), floor


def _list_fields(
    ids: Tensor, labels: Tensor, scores: Tensor, block: _Block, width: int, vote_labels: Tensor | None
) -> dict[str, Tensor]:
    """From lists that hold every item above their last score (exact, best first): the top ``width``
    (``ids``, ``scores``, ``hits``), the R-th item's tie group (``boundary_tied``, ``boundary_relevant``) and,
    with ``vote_labels``, the 1-NN ``votes`` (1/t for each label among the t nearest items)."""
    hits = (labels == block.labels[:, None]) & (scores > -INF)
    boundary = scores.gather(1, (block.relevant - 1).clamp(min=0)[:, None])
    in_boundary = (scores == boundary) & (scores > -INF)
    fields = {
        "ids": _pad(ids, width, -1),
        "scores": _pad(scores, width, -INF),
        "hits": _pad(hits, width, False),
        "boundary_tied": in_boundary.sum(1),
        "boundary_relevant": (in_boundary & hits).sum(1),
    }
    if vote_labels is not None:
        nearest = (scores == scores[:, :1]) & (scores > -INF)
        codes = torch.searchsorted(vote_labels, labels).clamp(max=max(len(vote_labels) - 1, 0))
        fields["votes"] = vote_shares(nearest, codes, len(vote_labels))
    return fields


def _exact_rows(
    ranks: Ranks,
    shard: _Shard,
    block: _Block,
    unsure: Tensor,
    width: int,
    vote_labels: Tensor | None,
    block_bytes: int,
) -> dict[str, Tensor]:
    """``_list_fields`` of the ``unsure`` queries from whole float64 rows: each shard's exact top ``width``
    merged, and the R-th and nearest scores' tie groups counted over every shard."""
    n_items = len(shard)
    parts = []
    per_pass = max(1, block_bytes // (32 * max(n_items, 1)))
    for part in unsure.split(per_pass):
        row = torch.arange(len(part), device=part.device).repeat_interleave(n_items)
        column = torch.arange(n_items, device=part.device).repeat(len(part))
        scores = pair_scores(block.embeddings[part], row, shard.items, column, shard.metric)
        scores = scores.view(len(part), n_items)
        scores[shard.ids[None, :] == block.ids[part, None]] = -INF
        top, columns = scores.topk(min(width, n_items), dim=1)
        columns = columns.clamp(max=max(n_items - 1, 0))
        ids = torch.where(top > -INF, shard.ids[columns], -1) if n_items else columns
        labels = shard.labels[columns] if n_items else columns
        lists = [
            ranks.stack(_pad(values, width, fill)) for values, fill in ((ids, -1), (labels, -1), (top, -INF))
        ]
        merged_ids, merged_labels, merged_scores = (values.permute(1, 0, 2).flatten(1) for values in lists)
        merged_scores, order = merged_scores.sort(dim=1, descending=True, stable=True)
        merged_ids, merged_labels = merged_ids.gather(1, order), merged_labels.gather(1, order)
        sub = _Block(
            *(
                getattr(block, key)[part]
                for key in ("embeddings", "labels", "ids", "relevant", "owner", "valid")
            )
        )
        fields = _list_fields(merged_ids, merged_labels, merged_scores, sub, width, vote_labels)
        # The tie groups may run past the merged lists: count them over the whole rows of every shard.
        relevant = shard.labels[None, :] == sub.labels[:, None]
        boundary = merged_scores.gather(1, (sub.relevant - 1).clamp(min=0)[:, None])
        in_boundary = (scores == boundary) & (scores > -INF)
        counts = torch.stack([in_boundary.sum(1), (in_boundary & relevant).sum(1)])
        fields["boundary_tied"], fields["boundary_relevant"] = ranks.reduce(counts, "sum")
        if vote_labels is not None:
            nearest = (scores == merged_scores[:, :1]) & (scores > -INF)
            codes = torch.searchsorted(vote_labels, shard.labels).expand_as(nearest)
            shares = vote_shares(nearest, codes, len(vote_labels)) * nearest.sum(1, keepdim=True)
            shares = ranks.reduce(shares, "sum")
            fields["votes"] = shares / shares.sum(1, keepdim=True).clamp(min=1)
        parts.append(fields)
    return {key: torch.cat([fields[key] for fields in parts]) for key in parts[0]}


def _ranking(
    parts: list[dict[str, Tensor]], relevant: Tensor, width: int, device: torch.device, vote_labels
) -> Ranking:
    """This rank's queries' ``Ranking`` from the merged fields of its rows of every step."""
    fields = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
    if not fields:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        fields = {
            key: empty for key in ("above", "tied", "tied_relevant", "boundary_tied", "boundary_relevant")
        }
        fields |= {"ids": empty.view(0, width), "scores": empty.view(0, width).double()}
        fields["hits"] = fields["ids"].bool()
        if vote_labels is not None:
            fields["votes"] = torch.zeros(0, len(vote_labels), dtype=torch.float64, device=device)
    average_precision, r_precision = expected_precisions(
        fields["scores"], fields["hits"], relevant, fields["boundary_tied"], fields["boundary_relevant"]
    )
    return Ranking(
        relevant=relevant,
        above=fields["above"],
        tied=fields["tied"],
        tied_relevant=fields["tied_relevant"],
        average_precision=average_precision,
        r_precision=r_precision,
        top_indices=fields["ids"],
        top_scores=fields["scores"],
        votes=fields.get("votes"),
        vote_labels=vote_labels,
    )


def gather_ranking(
    ranking: Ranking, query_labels: Tensor, query_ids: Tensor, group: dist.ProcessGroup | None = None
) -> tuple[Ranking, Tensor]:
    """``(ranking, labels)`` of every rank's queries in the order of their ids: the per-query fields of
    ``ranking`` (top lists left empty) and the query labels, all-gathered. O(N) values (and the votes, when
    made), so that every rank's metric means sum the same values in the same order as one process does."""
    ranks = Ranks(group)
    ids = ranks.cat(query_ids.to(ranking.relevant.device))
    order = torch.argsort(ids)
    fields = ("relevant", "above", "tied", "tied_relevant", "average_precision", "r_precision", "votes")
    gathered = {
        name: ranks.cat(getattr(ranking, name))[order]
        for name in fields
        if getattr(ranking, name) is not None
    }
    empty = ranking.top_indices.new_zeros(len(ids), 0)
    result = Ranking(
        **gathered, top_indices=empty, top_scores=empty.double(), vote_labels=ranking.vote_labels
    )
    return result, ranks.cat(query_labels.to(ids.device))[order]
