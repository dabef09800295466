"""Sharded evaluation under DDP: each rank keeps the items it embedded (the distributed sampler's padding
dropped by dataset index), ranks them with ``metrics.sharded.sharded_rank`` and logs means that every rank
sums alike from the all-gathered per-query values. Only O(N) numbers cross ranks, plus, for k-means, the
clustered items' embeddings (to rank 0) and, when pictures are due, the set (as the gathered path does)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_dml.errors import LightningDMLError
from lightning_dml.metrics import Ranking
from lightning_dml.metrics.sharded import Ranks, sharded_rank


def world_size() -> int:
    """Processes in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_set(batches: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], int]:
    """``(outputs, distinct)``: this rank's rows of one evaluation set, each dataset index kept once over all
    ranks (its first occurrence in rank order: the distributed sampler pads the last ranks with repeats),
    sorted by index; and the number of distinct indices over all ranks."""
    outputs = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
    ranks = Ranks()
    indices = outputs["indices"]
    everyone = ranks.cat(indices)
    offset = int(ranks.cat(torch.tensor([len(indices)], device=indices.device))[: ranks.rank].sum())
    order = torch.argsort(everyone, stable=True)
    first = torch.ones_like(everyone, dtype=torch.bool)
    first[1:] = everyone[order][1:] != everyone[order][:-1]
    kept = torch.zeros_like(first)
    kept[order[first]] = True
    mine = kept[offset : offset + len(indices)]
    mine_sorted = torch.argsort(indices[mine])
    return {key: value[mine][mine_sorted] for key, value in outputs.items()}, int(first.sum())


def check_count(name: str, distinct: int, size: int, complete: bool) -> str | None:
    """Refuse a set that lost images when the whole loader ran; else the warning (or ``None``) to give."""
    if distinct == size:
        return None
    message = f"{name}: evaluated {distinct} distinct images of {size}"
    if complete:
        raise LightningDMLError(f"{message}: the evaluation loader or its sampler lost images")
    return message


def rank_shards(
    outputs: dict[str, Tensor], embeddings: Tensor, metric: str, votes: bool, top_k: int
) -> tuple[Ranking, Tensor, Tensor]:
    """``(ranking, query_labels, query_ids)`` of this rank's queries against every rank's gallery items: each
    query against the gallery items, or leave-one-out without ``is_query``/``is_gallery``."""
    labels, indices = outputs["labels"], outputs["indices"]
    everything = torch.ones_like(indices, dtype=torch.bool)
    query = outputs["is_query"].bool() if "is_query" in outputs else everything
    gallery = outputs["is_gallery"].bool() if "is_gallery" in outputs else everything
    ranking = sharded_rank(
        embeddings[query].float(), labels[query], indices[query],
        embeddings[gallery].float(), labels[gallery], indices[gallery],
        metric=metric, votes=votes, top_k=top_k,
    )  # fmt: skip
    return ranking, labels[query], indices[query]


def picture_ranking(ranking: Ranking, query_ids: Tensor, outputs: dict[str, Tensor], top_k: int) -> Ranking:
    """The pictures' ``Ranking`` of a gathered set (``outputs``, sorted by index, on every rank): AP@R,
    R-Precision and the first ``top_k`` items of every query, their gallery ids turned into positions among
    the gallery rows."""
    ranks = Ranks()
    order = torch.argsort(ranks.cat(query_ids))
    top = ranks.cat(ranking.top_indices[:, :top_k].contiguous())[order]
    average_precision = ranks.cat(ranking.average_precision)[order]
    gallery_ids = (
        outputs["indices"][outputs["is_gallery"].bool()] if "is_gallery" in outputs else outputs["indices"]
    )
    positions = torch.searchsorted(gallery_ids, top.clamp(min=0)).masked_fill(top < 0, -1)
    zeros = torch.zeros_like(average_precision, dtype=torch.long)
    return Ranking(
        relevant=zeros,
        above=zeros,
        tied=zeros,
        tied_relevant=zeros,
        average_precision=average_precision,
        r_precision=ranks.cat(ranking.r_precision)[order],
        top_indices=positions,
        top_scores=ranks.cat(ranking.top_scores[:, :top_k].contiguous())[order],
    )


def gather_to_first(tensor: Tensor) -> Tensor | None:
    """Every rank's ``tensor`` (lengths may differ) in rank order, on rank 0; ``None`` on the others."""
    ranks = Ranks()
    if ranks.size == 1:
        return tensor
    lengths = ranks.stack(torch.tensor([len(tensor)], device=tensor.device))[:, 0].tolist()
    padded = torch.nn.functional.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, max(lengths) - len(tensor)))
    parts = [torch.empty_like(padded) for _ in lengths] if ranks.rank == 0 else None
    dist.gather(padded.contiguous(), parts, dst=0)
    if parts is None:
        return None
    return torch.cat([part[:length] for part, length in zip(parts, lengths, strict=True)])
