"""Leave-one-out screen facts from half of the score matrix.

When the queries are the gallery, the score matrix is symmetric: each pair (i, j) is scored once and
serves both rows, which halves the matrix product, the dominant cost in high dimension. Items are sorted
by label and cut into blocks at class boundaries, so every row's relevant items lie in its own block.
Block [s, e) scores its rows against the columns from s on (its strip), and then:

- row side: for its own rows, the best relevant score p, the top-m, the items above p's window and those
  inside it (``ranking._torch_screen``);
- column side: for the items after e, its rows add top-m candidates, counts above their windows and the
  items inside them. Both start from maxima over groups of rows: a column whose maxima stay below its
  current m-th best score (or below its window) needs no work there, the common case once the embeddings
  are any good.

Blocks run from last to first, so a column side only meets items whose window is known (their own block
ran before). Same-id exclusion is the diagonal only, so ids must be unique (the caller checks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dml.metrics.knn import Metric
from lightning_dml.metrics.topm import (
    best_of,
    column_candidates,
    column_group_maxima,
    column_windows,
    group_size,
    row_candidates,
    row_group_maxima,
    row_windows,
)

INF = float("inf")
#: At least this many blocks: strips then cover (1 + 1/8) / 2 of the full matrix.
MIN_BLOCKS = 8


def leave_one_out_screen(
    items: Tensor,
    labels: Tensor,
    metric: Metric,
    per_group: int,
    width: int,
    block_cells: int,
    tolerance: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``ranking._torch_screen``'s facts in leave-one-out from half of the score matrix, rows in sorted order.

    ``items``: label-sorted prepared embeddings, zero-padded to a multiple of ``per_group`` rows; ``labels``:
    their ``N`` sorted labels; ``tolerance``: each item's window half-width. Scores are -|x - y|² in full
    for Euclidean. A block's strip holds about ``block_cells`` scores (a block may grow to the end of the
    class it would cut). Extra memory: one strip of scores (and a quarter of it for poor embeddings).
    """
    n, padded = len(labels), len(items)
    class_start = torch.searchsorted(labels, labels, side="left")
    class_length = torch.searchsorted(labels, labels, side="right") - class_start
    bounds = _block_bounds(class_start, class_start + class_length, block_cells, -(-n // MIN_BLOCKS), padded)
    block_buffer = items.new_empty(
        max(
            _padded_height(stop - start, width)[0] * (padded - start // per_group * per_group)
            for start, stop in bounds
        )
    )
    squares = items.square().sum(1) if metric == "euclidean" else None
    offsets = torch.arange(int(class_length.max()), device=items.device)
    # Window [low, high] around each item's best relevant score; lone items get +inf: nothing in it or above.
    low, high = items.new_full((n,), INF), items.new_full((n,), INF)
    above = torch.zeros(n, dtype=torch.float64, device=items.device)
    top_columns = torch.zeros(n, width, dtype=torch.long, device=items.device)
    top_scores = items.new_full((n, width), -INF)
    window = []
    for start, stop in reversed(bounds):
        first = start // per_group * per_group  # a multiple of per_group, as row_candidates needs
        row_group = min(per_group, group_size(padded - first, width))  # both powers of two
        height, column_group = _padded_height(stop - start, width)
        block = block_buffer[: height * (padded - first)].view(height, padded - first)
        scores = block[: stop - start]
        if squares is None:
            torch.mm(items[start:stop], items[first:].T, out=scores)
        else:  # -|x - y|² in full: rows and columns must rank by the same value
            torch.addmm(squares[first:], items[start:stop], items[first:].T, alpha=2, beta=-1, out=scores)
            scores.sub_(squares[start:stop, None])
        scores[:, : start - first] = -INF  # earlier blocks' items: scored in their own strips
        scores[:, n - first :] = -INF  # padding
        scores.diagonal(start - first).fill_(-INF)  # the item itself
        block[stop - start :] = -INF  # padding rows for the column-side groups

        relevant_columns = (class_start[start:stop, None] - first + offsets).clamp(max=padded - first - 1)
        outside = offsets >= class_length[start:stop, None]
        best = scores.gather(1, relevant_columns).masked_fill_(outside, -INF).amax(1).double()
        lone = class_length[start:stop] == 1
        low[start:stop] = (best - tolerance[start:stop]).masked_fill_(lone, INF)
        high[start:stop] = (best + tolerance[start:stop]).masked_fill_(lone, INF)
        # The rows' lists are still empty (earlier blocks' column sides reach only items after them), so
        # the strip's own top lists are theirs.
        row_maxima = row_group_maxima(scores, row_group)
        listed = min(width, padded - first)
        columns, values = best_of(*row_candidates(scores, row_maxima, listed), listed)
        top_columns[start:stop, :listed], top_scores[start:stop, :listed] = columns + first, values
        counts, rows, columns = row_windows(
            scores, row_maxima, columns, values, low[start:stop], high[start:stop]
        )
        above[start:stop] += counts
        window.append(torch.stack([rows + start, columns + first]))
        if stop < n:
            later = block[:, stop - first : n - first]
            maxima = column_group_maxima(later, column_group)
            _update_later_tops(later, maxima, start, stop, top_columns, top_scores)
            rows, columns = column_windows(later, maxima, low[stop:], high[stop:], above[stop:])
            window.append(torch.stack([columns + stop, rows + start]))
    return top_columns, top_scores, above.long(), torch.cat(window, 1)


def _update_later_tops(
    later: Tensor, maxima: Tensor, start: int, stop: int, top_columns: Tensor, top_scores: Tensor
) -> None:
    """Merge a strip's column side into the running top lists of items ``stop…``; a column whose group
    ``maxima`` all stay at or below its current m-th best score cannot change its list and is skipped."""
    active = torch.nonzero(maxima.amax(0) > top_scores[stop:, -1]).flatten()
    if len(active) == 0:
        return
    rows, values = column_candidates(later, maxima, top_scores.shape[1], active)
    items = stop + active
    merged = best_of(
        torch.cat([top_columns[items], (rows + start).clamp_(max=len(top_columns) - 1)], 1),
        torch.cat([top_scores[items], values], 1),
        top_scores.shape[1],
    )
    top_columns[items], top_scores[items] = merged


def _padded_height(rows: int, depth: int) -> tuple[int, int]:
    """``(rows rounded up to a multiple of the column side's group size, that size)``."""
    size = group_size(rows, depth)
    return -(-rows // size) * size, size


def _block_bounds(
    class_start: Tensor, class_stop: Tensor, cells: int, most_rows: int, width: int
) -> list[tuple[int, int]]:
    """``[(start, stop), …]`` covering all rows, cut only between classes; a block starting at s takes
    about ``cells / (width - s)`` rows (strips narrow as s grows), at most ``most_rows``."""
    n, bounds, start = len(class_start), [], 0
    while start < n:
        stop = min(n, start + max(1, min(most_rows, cells // (width - start))))
        if stop < n:  # move the cut back to where the class containing row `stop` begins
            cut = int(class_start[stop])
            stop = cut if cut > start else int(class_stop[stop])
        bounds.append((start, stop))
        start = stop
    return bounds
