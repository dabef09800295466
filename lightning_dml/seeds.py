"""The run seed: the one number behind every random choice of a training run except the data split."""

from __future__ import annotations

import os

import torch


def run_seed() -> int:
    """The seed of this run: Lightning's ``seed_everything`` value (the ``PL_GLOBAL_SEED`` variable it sets,
    shared by every DDP rank), else torch's initial seed, in ``0 .. 2**32 - 1``."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else torch.initial_seed() % 2**32
