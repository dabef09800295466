"""Class and image splits, and the zero-shot check that train and evaluation classes are disjoint."""

from __future__ import annotations

import torch

from lightning_dml.errors import DataError


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
    if not 2 <= count < len(classes):
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
        listed = ", ".join(str(c) for c in shared[:20].tolist()) + (" ..." if len(shared) > 20 else "")
        raise DataError(
            f"zero-shot protocol, but the training and {evaluation_name} sets share {len(shared)} class ids: "
            f"{listed}; make the class lists disjoint or choose protocol: closed_set"
        )
