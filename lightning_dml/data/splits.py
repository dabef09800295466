"""Class and image splits, and the checks that a split can work: known classes, listed once, disjoint
where the protocol says so, evaluation sets with something to retrieve."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import torch

from lightning_dml.data.base import RetrievalDataset
from lightning_dml.errors import DataError


def listed(names: Sequence, limit: int = 20) -> str:
    """Return the first ``limit`` names comma-separated, with ``...`` when there are more."""
    return ", ".join(str(name) for name in names[:limit]) + (" ..." if len(names) > limit else "")


def check_class_list(option: str, chosen: Sequence[Hashable], classes: Sequence[Hashable]) -> None:
    """Raise a DataError naming ``option`` if it lists a class twice or a class not among ``classes``."""
    twice = sorted(name for name, count in Counter(chosen).items() if count > 1)
    if twice:
        raise DataError(f"{option} lists {listed(twice)} more than once; list each class once")
    unknown = sorted(set(chosen) - set(classes))
    if unknown:
        everything = sorted(classes)
        contiguous = all(isinstance(c, int) for c in everything) and everything == list(
            range(everything[0], everything[-1] + 1)
        )
        valid = f"{everything[0]}–{everything[-1]}" if contiguous else listed(everything)
        raise DataError(f"{option} names unknown classes {listed(unknown)}; the valid classes are {valid}")


def positions_of_classes(labels: torch.Tensor, classes: torch.Tensor | list[int]) -> torch.Tensor:
    """Return the positions whose label is one of ``classes``."""
    return torch.isin(labels, torch.as_tensor(classes, dtype=labels.dtype)).nonzero().flatten()


def first_half_of_classes(labels: torch.Tensor) -> torch.Tensor:
    """Return the sorted lower half of the class ids present (the usual zero-shot training classes)."""
    classes = torch.unique(labels)
    return classes[: len(classes) // 2]


def hold_out_classes(labels: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Pick classes to hold out at random: a fraction (at least 2) if ``amount < 1``, else that many."""
    classes = torch.unique(labels)
    count = max(round(amount * len(classes)), 2) if amount < 1 else int(amount)
    if not 2 <= count <= len(classes) - 2:
        raise DataError(
            f"holding out {amount} of {len(classes)} training classes leaves {count} for validation and "
            f"{len(classes) - count} for training; both need at least 2 (change val_classes)"
        )
    return classes[torch.randperm(len(classes), generator=generator)[:count]].sort().values


def hold_out_images(
    labels: torch.Tensor, fraction: float, keep_at_least: int, generator: torch.Generator
) -> torch.Tensor:
    """Pick ``fraction`` of each class's images at random, leaving at least ``keep_at_least`` per class."""
    held_out = []
    for label in torch.unique(labels):
        positions = (labels == label).nonzero().flatten()
        count = min(int(fraction * len(positions)), len(positions) - keep_at_least)
        held_out.append(positions[torch.randperm(len(positions), generator=generator)[: max(count, 0)]])
    return torch.cat(held_out).sort().values


def check_disjoint_classes(train: torch.Tensor, evaluation: torch.Tensor, evaluation_name: str) -> None:
    """Raise a DataError listing the class ids that the training and evaluation labels share."""
    shared = torch.unique(train[torch.isin(train, evaluation)])
    if len(shared):
        raise DataError(
            f"zero-shot protocol, but the training and {evaluation_name} sets share {len(shared)} class ids: "
            f"{listed(shared.tolist())}; make the class lists disjoint or choose protocol: closed_set"
        )


def check_evaluation_set(name: str, dataset: RetrievalDataset, fix: str) -> None:
    """Raise a DataError naming the set and ``fix`` unless it holds 2+ classes and a query with a match.

    A query's matches are the other gallery items of its class (every item is both without roles). With one
    class every retrieval is right; without any match every metric is NaN: neither number means anything.
    """
    labels = dataset.class_ids
    if not len(labels):
        raise DataError(f"{name} is empty; {fix}")
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise DataError(f"{name} holds only class {int(classes[0])}, so every retrieval is right; {fix}")
    everything = torch.ones_like(labels, dtype=torch.bool)
    query = everything if dataset.is_query is None else dataset.is_query
    gallery = everything if dataset.is_gallery is None else dataset.is_gallery
    codes = torch.unique(labels, return_inverse=True)[1]
    matches = torch.bincount(codes[gallery], minlength=len(classes))[codes] - gallery.long()
    if not (matches[query] > 0).any():
        raise DataError(f"no query of {name} has another image of its class to find (metrics NaN); {fix}")
