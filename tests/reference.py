"""Independent references for the tests: retrieval metrics by sorting each query's whole gallery in float64
(no code shared with the package), and a model's embeddings of an evaluation set, recomputed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


@torch.no_grad()
def embed_loader(model: torch.nn.Module, loader: Iterable[dict]) -> dict[str, np.ndarray]:
    """Return the model's embeddings (eval mode, float64), labels and query/gallery roles of every item."""
    model.eval()
    batches = [{"embeddings": model(batch["image"]), **batch} for batch in loader]
    keys = [key for key in ("embeddings", "label", "is_query", "is_gallery") if key in batches[0]]
    return {key: torch.cat([batch[key] for batch in batches]).double().numpy() for key in keys}


def float64_scores(query: torch.Tensor, gallery: torch.Tensor, metric: str) -> torch.Tensor:
    """Cosine of float64-normalised rows, or -|q - g|² computed as a difference (no cancellation)."""
    query, gallery = torch.as_tensor(query).double(), torch.as_tensor(gallery).double()
    if metric == "cosine":
        return (query / query.norm(dim=1, keepdim=True)) @ (gallery / gallery.norm(dim=1, keepdim=True)).T
    return -(query[:, None, :] - gallery[None, :, :]).square().sum(-1)


def tie_averaged_metrics(
    embeddings,
    labels,
    is_query=None,
    is_gallery=None,
    *,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    metric: str = "cosine",
    trials: int = 1,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, float]]:
    """``(means, standard errors)`` over ``trials`` of Recall@K, precision@1, R-Precision, MAP@R (Musgrave
    et al. 2020, over queries with a relevant item) and the 1-NN macro recall (over all queries).

    Every item is a query and a gallery item unless roles are given; a query never retrieves itself. Each
    query's whole gallery is sorted by float64 score, ties broken by a fresh random key in each trial: with
    no equal scores every trial agrees and the value is exact; with ties the mean estimates the expected
    value over random tie orders (Monte Carlo).
    """
    labels = torch.as_tensor(labels)
    everything = torch.ones(len(labels), dtype=torch.bool)
    query = everything if is_query is None else torch.as_tensor(is_query).bool()
    gallery = everything if is_gallery is None else torch.as_tensor(is_gallery).bool()
    scores = float64_scores(embeddings, embeddings, metric)[query]
    scores[:, ~gallery] = -torch.inf
    scores[torch.arange(int(query.sum())), torch.nonzero(query).flatten()] = -torch.inf  # never itself
    query_labels = labels[query]
    relevant = (query_labels[:, None] == labels[None, :]) & (scores > -torch.inf)
    counted, r = relevant.any(1), relevant.sum(1)
    generator = torch.Generator().manual_seed(seed)
    per_trial = []
    for _ in range(trials):
        by_key = torch.rand(scores.shape, generator=generator, dtype=torch.float64).argsort(1)
        order = by_key.gather(1, scores.gather(1, by_key).argsort(dim=1, descending=True, stable=True))
        hits = relevant.gather(1, order)
        first = torch.where(hits.any(1), hits.byte().argmax(1), hits.shape[1])
        values = {f"recall@{k}": (first < k).double() for k in recall_at} | {
            "precision@1": (first < 1).double()
        }
        position = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
        within = hits & (position <= r[:, None])
        values["r_precision"] = within.sum(1).double() / r.clamp(min=1)
        values["map@r"] = ((within.cumsum(1) / position) * within).sum(1) / r.clamp(min=1)
        summary = {name: float(value[counted].mean()) for name, value in values.items()}
        nearest = labels[order[:, 0]]
        summary["1nn_macro_recall"] = float(
            torch.stack(
                [(nearest[query_labels == c] == c).double().mean() for c in query_labels.unique()]
            ).mean()
        )
        per_trial.append(summary)
    means = {name: sum(t[name] for t in per_trial) / trials for name in per_trial[0]}
    errors = {
        name: (sum((t[name] - means[name]) ** 2 for t in per_trial) / max(trials - 1, 1) / trials) ** 0.5
        for name in means
    }
    return means, errors


def brute_force_metrics(embeddings, labels, is_query=None, is_gallery=None, **options) -> dict[str, float]:
    """Recall@K, precision@1, R-Precision and MAP@R of :func:`tie_averaged_metrics` in one trial (exact
    when no two scores of a query are equal); ``options``: its ``recall_at`` and ``metric``."""
    means, _ = tie_averaged_metrics(embeddings, labels, is_query, is_gallery, **options)
    return {name: value for name, value in means.items() if name != "1nn_macro_recall"}


def reference_metrics(model: torch.nn.Module, loader: Iterable[dict], **options) -> dict[str, float]:
    """:func:`brute_force_metrics` of the model's embeddings of ``loader``'s evaluation set."""
    items = embed_loader(model, loader)
    return brute_force_metrics(
        items["embeddings"], items["label"], items.get("is_query"), items.get("is_gallery"), **options
    )


def assert_logged(metrics: dict, prefix: str, expected: dict[str, float]) -> None:
    """Assert that each expected metric was logged as ``{prefix}/{name}`` with its value (to 1e-6: logged
    values are float32)."""
    logged = {name: float(metrics[f"{prefix}/{name}"]) for name in expected}
    wrong = {
        name: (logged[name], value) for name, value in expected.items() if abs(logged[name] - value) > 1e-6
    }
    assert not wrong, f"logged and reference values differ: {wrong}"
