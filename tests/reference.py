"""Independent references for end-to-end tests: a model's embeddings of an evaluation set, recomputed, and
retrieval metrics by sorting each query's whole gallery in float64 (no code shared with the package)."""

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


def brute_force_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    is_query: np.ndarray | None = None,
    is_gallery: np.ndarray | None = None,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    metric: str = "cosine",
) -> dict[str, float]:
    """Recall@K, precision@1, R-Precision and MAP@R (Musgrave et al. 2020), averaged over the queries that
    have a relevant item. Every item is a query and a gallery item unless roles are given; a query never
    retrieves itself."""
    x = np.asarray(embeddings, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        similarity = x @ x.T
    else:
        similarity = -np.linalg.norm(x[:, None] - x[None], axis=-1)
    everything = np.ones(len(x), dtype=bool)
    query = everything if is_query is None else np.asarray(is_query, dtype=bool)
    gallery = everything if is_gallery is None else np.asarray(is_gallery, dtype=bool)
    per_query: dict[str, list[float]] = {}
    for q in np.flatnonzero(query):
        candidates = np.flatnonzero(gallery & (np.arange(len(x)) != q))
        hits = labels[candidates[np.argsort(-similarity[q, candidates])]] == labels[q]
        r = int(hits.sum())
        if r == 0:
            continue
        precision_at = np.cumsum(hits[:r]) / np.arange(1, r + 1)
        values = {f"recall@{k}": hits[:k].any() for k in recall_at} | {
            "precision@1": hits[0],
            "r_precision": hits[:r].mean(),
            "map@r": (precision_at * hits[:r]).sum() / r,
        }
        for name, value in values.items():
            per_query.setdefault(name, []).append(float(value))
    return {name: float(np.mean(values)) for name, values in per_query.items()}


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
