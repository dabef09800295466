"""Scenarios for the sharded ranking: each rank takes an uneven share of every data set (the last of 4
ranks none) and returns every query's fields and the metrics, gathered in id order. ``run(world_size, out)``
runs them in one process (W = 1) or under ``torch.multiprocessing.spawn`` with the gloo backend."""

from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_dml.metrics import classification_from_ranking, metrics_from_ranking
from lightning_dml.metrics.sharded import Ranks, gather_ranking, sharded_rank
from tests.metrics.conftest import make_clustered

RECALL_AT = (1, 2, 4, 8, 100)


def circle(n: int, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D normalised points (moved by ``offset``): float32 rounds near neighbours onto equal scores."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=generator)
    angle = labels * (2 * math.pi / 10) + 0.6 * torch.randn(n, generator=generator)
    return torch.stack([angle.cos(), angle.sin()], 1) + torch.tensor(offset), labels


def lattice(n: int = 300, low: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on a coarse grid from ``low`` to ``low + 4``: exact duplicates and equal scores everywhere."""
    generator = torch.Generator().manual_seed(3)
    points = torch.randint(low, low + 5, (n, 2), generator=generator).float()
    return points, torch.randint(0, 4, (n,), generator=generator)


def scenarios() -> dict[str, dict]:
    """Each data set with its metric and, for query-vs-gallery sets, the roles."""
    clustered, clustered_labels = make_clustered(0)
    roles = torch.arange(len(clustered_labels))
    return {
        "clustered": {"data": (clustered, clustered_labels), "metric": "cosine"},
        "circle": {"data": circle(1500), "metric": "cosine"},
        "far_euclidean": {"data": circle(800, (100.0, -70.0)), "metric": "euclidean"},
        "lattice": {"data": lattice(), "metric": "euclidean"},
        "lattice_cosine": {"data": lattice(low=1), "metric": "cosine"},  # equal cosines of multiples
        "collapsed": {"data": (torch.ones(40, 8), torch.arange(40) % 4), "metric": "cosine"},
        "query_gallery": {
            "data": (clustered, clustered_labels),
            "metric": "cosine",
            "is_query": roles % 2 == 0,
            "is_gallery": roles % 3 != 0,  # a third of the items only query, some items both
        },
    }


def share(n: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's item positions: uneven random shares, and none for the last of 4 ranks."""
    generator = torch.Generator().manual_seed(n)
    owners = torch.multinomial(torch.tensor([1.0, 3.0, 2.0, 0.0][:world_size]), n, True, generator=generator)
    return torch.nonzero(owners == rank).flatten() if world_size > 1 else torch.arange(n)


def evaluate(rank: int, world_size: int) -> dict[str, dict]:
    """Every scenario's gathered fields and metrics, from this rank's share."""
    results = {}
    for name, scenario in scenarios().items():
        embeddings, labels = scenario["data"]
        mine = share(len(labels), rank, world_size)
        everything = torch.ones(len(labels), dtype=torch.bool)
        query = mine[scenario.get("is_query", everything)[mine]]
        gallery = mine[scenario.get("is_gallery", everything)[mine]]
        ranking = sharded_rank(
            embeddings[query], labels[query], query,
            embeddings[gallery], labels[gallery], gallery,
            metric=scenario["metric"], top_k=5, votes=True, queries_per_step=23,
        )  # fmt: skip
        gathered, query_labels = gather_ranking(ranking, labels[query], query)
        ranks = Ranks()
        top = ranks.cat(ranking.top_scores[:, :5])[torch.argsort(ranks.cat(query))]
        fields = {key: getattr(gathered, key) for key in ("relevant", "above", "tied", "tied_relevant")}
        fields |= {"average_precision": gathered.average_precision, "r_precision": gathered.r_precision}
        results[name] = {
            "fields": fields | {"votes": gathered.votes, "top_scores": top},
            "metrics": metrics_from_ranking(gathered, RECALL_AT)
            | classification_from_ranking(gathered, query_labels),
        }
    return results


def _worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results = evaluate(rank, world_size)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def run(world_size: int, out: str) -> dict[str, dict]:
    """The scenarios' results with ``world_size`` processes."""
    if world_size == 1:
        return evaluate(0, 1)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, (world_size, os.path.join(folder, "init"), out), nprocs=world_size)
    return torch.load(out, weights_only=True)
