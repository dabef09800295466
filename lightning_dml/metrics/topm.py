"""The m highest scores of every row (or column) of a score block, via interleaved group maxima.

Group j of a row holds its entries j, j + W, j + 2W, … (W = length / groups). A row's top m entries lie
in its m groups with the highest maxima, so one vectorised max over the groups and a top-k over
``m × groups`` candidates replace a top-k over the whole row: torch's CPU ``topk`` costs more per entry
than the comparisons it replaces.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Most interleaved groups per row.
MAX_GROUPS = 64


def group_count(length: int, m: int) -> int:
    """Power of two near sqrt(length / m), at most ``MAX_GROUPS``: it balances the top-m search over
    ``length / groups`` group maxima against the one over ``m × groups`` candidates; 1 when ``m`` is
    so large that grouping would not pay."""
    groups = 1
    while groups * 2 <= min(MAX_GROUPS, (length / max(m, 1)) ** 0.5):
        groups *= 2
    return groups if groups >= 4 else 1


def row_candidates(block: Tensor, m: int, groups: int) -> tuple[Tensor, Tensor]:
    """``(columns, values)`` of each row's candidates, ``(rows, c)`` each: a set of ``c`` entries that
    holds the row's ``m`` highest (``c = m × groups``; with ``groups == 1``, exactly the top m).

    The row length must be a multiple of ``groups``.
    """
    rows, length = block.shape
    if groups == 1:
        values, columns = block.topk(min(m, length), dim=1, sorted=False)
        return columns, values
    group_length = length // groups
    best_groups = block.view(rows, groups, group_length).amax(1).topk(m, dim=1, sorted=False).indices
    spread = group_length * torch.arange(groups, device=block.device)
    candidates = (best_groups[:, :, None] + spread).view(rows, m * groups)
    return candidates, block.gather(1, candidates)


def column_group_maxima(block: Tensor, groups: int) -> Tensor:
    """``(length / groups, columns)``: the maximum of each column's interleaved row groups (group j holds
    rows j, j + L, j + 2L, …; L = length / groups); ``block`` itself when ``groups == 1``.

    ``block`` may be a column slice of a larger matrix; its row count must be a multiple of ``groups``.
    """
    if groups == 1:
        return block
    return block.view(groups, -1, block.shape[1]).amax(0)


def column_candidates(block: Tensor, maxima: Tensor, m: int, columns: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, values)`` of the candidates of ``block``'s ``columns``, ``(len(columns), c)`` each, as
    ``row_candidates``, from the block's ``column_group_maxima``."""
    group_length = len(maxima)
    groups = len(block) // group_length
    values, best_groups = maxima[:, columns].T.contiguous().topk(min(m, group_length), dim=1, sorted=False)
    if groups == 1:
        return best_groups, values
    spread = group_length * torch.arange(groups, device=block.device)
    candidates = (best_groups[:, :, None] + spread).view(len(columns), -1)
    return candidates, block[candidates, columns[:, None]]


def best_of(indices: Tensor, values: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The ``m`` highest ``values`` of each row, best first, with their ``indices``."""
    values, picked = values.topk(m, dim=1)
    return indices.gather(1, picked), values
