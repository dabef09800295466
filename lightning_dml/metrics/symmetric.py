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
    group_count,
    row_candidates,
)

INF = float("inf")
#: At least this many blocks: strips then cover (1 + 1/8) / 2 of the full matrix.
MIN_BLOCKS = 8


def leave_one_out_screen(
    items: Tensor,
    labels: Tensor,
    metric: Metric,
    groups: int,
    width: int,
    block_cells: int,
    tolerance: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``ranking._torch_screen``'s facts in leave-one-out from half of the score matrix, rows in sorted order.

    ``items``: label-sorted prepared embeddings, zero-padded to a multiple of ``groups`` rows; ``labels``:
    their ``N`` sorted labels; ``tolerance``: each item's window half-width. Scores are -|x - y|² in full
    for Euclidean. A block's strip holds about ``block_cells`` scores (a block may grow to the end of the
    class it would cut). Extra memory: one strip of scores and a quarter of it.
    """
    n, padded = len(labels), len(items)
    class_start = torch.searchsorted(labels, labels, side="left")
    class_length = torch.searchsorted(labels, labels, side="right") - class_start
    bounds = _block_bounds(class_start, class_start + class_length, block_cells, -(-n // MIN_BLOCKS), padded)
    block_buffer = items.new_empty(
        max(
            _padded_height(stop - start, width)[0] * (padded - start // groups * groups)
            for start, stop in bounds
        )
    )
    count_buffer = items.new_empty(max(_slice_rows(stop - start) * (n - stop) for start, stop in bounds))
    squares = items.square().sum(1) if metric == "euclidean" else None
    offsets = torch.arange(int(class_length.max()), device=items.device)
    # Window [low, high] around each item's best relevant score; lone items get +inf: nothing in it or above.
    low, high = items.new_full((n,), INF), items.new_full((n,), INF)
    above = torch.zeros(n, dtype=torch.float64, device=items.device)
    top_columns = torch.zeros(n, width, dtype=torch.long, device=items.device)
    top_scores = items.new_full((n, width), -INF)
    window = []
    for start, stop in reversed(bounds):
        first = start // groups * groups  # a multiple of groups, as row_candidates needs
        column_groups = min(groups, group_count(padded - first, width))  # both powers of two
        height, row_groups = _padded_height(stop - start, width)
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
        columns, values = row_candidates(scores, width, column_groups)
        _merge(top_columns, top_scores, slice(start, stop), columns + first, values)
        window.append(_strip_window(scores, top_columns, top_scores, low, high, start, stop, first))
        if stop < n:
            later = block[:, stop - first : n - first]
            maxima = column_group_maxima(later, row_groups)
            _update_later_tops(later, maxima, start, stop, top_columns, top_scores)
            rows, columns = _later_above_and_window(
                later, maxima, low[stop:], high[stop:], above[stop:], count_buffer
            )
            window.append(torch.stack([columns + stop, rows + start]))
        above[start:stop] += scores.gt_(high[start:stop, None]).sum(1)
    return top_columns, top_scores, above.long(), torch.cat(window, 1)


def _strip_window(
    scores: Tensor,
    top_columns: Tensor,
    top_scores: Tensor,
    low: Tensor,
    high: Tensor,
    start: int,
    stop: int,
    first: int,
) -> Tensor:
    """``(2, P)`` (item, item) pairs of a block's rows and the strip items within their windows: from the
    strip's top lists where the window ends inside them, else from the strip's rows themselves."""
    rows = slice(start, stop)
    low, high = low[rows, None], high[rows, None]
    listed = (top_scores[rows] >= low) & (top_scores[rows] <= high)
    deep = top_scores[rows, -1] >= low[:, 0]
    row, slot = torch.nonzero(listed & ~deep[:, None], as_tuple=True)
    pairs = [torch.stack([row + start, top_columns[rows][row, slot]])]
    deep = torch.nonzero(deep).flatten()
    if len(deep):
        part = scores[deep]
        row, column = torch.nonzero((part >= low[deep]) & (part <= high[deep]), as_tuple=True)
        pairs.append(torch.stack([deep[row] + start, column + first]))
    return torch.cat(pairs, 1)


def _later_above_and_window(
    later: Tensor, maxima: Tensor, low: Tensor, high: Tensor, above: Tensor, buffer: Tensor
) -> tuple[Tensor, Tensor]:
    """Add to ``above[j]`` the rows of ``later`` scoring over ``high[j]``; return ``(rows, columns)`` of the
    scores within ``[low[j], high[j]]``.

    Only groups whose maximum reaches ``low`` can hold such scores, and usually few do: those are checked
    one by one. When many do (poor embeddings), whole slices of rows are compared instead.
    """
    group_rows, columns = maxima.shape
    groups = len(later) // group_rows
    reaching = maxima >= low
    hits = int(reaching.sum())
    if hits * groups * 32 < later.numel():  # row indices then take at most 1/16 of the strip's bytes
        group, column = torch.nonzero(reaching, as_tuple=True)
        rows = group[:, None] + group_rows * torch.arange(groups, device=later.device)
        values = later[rows, column[:, None]]
        above.index_add_(0, column, (values > high[column, None]).sum(1).to(above.dtype))
        inside = (values >= low[column, None]) & (values <= high[column, None])
        pair, slot = torch.nonzero(inside, as_tuple=True)
        return rows[pair, slot], column[pair]
    slice_rows = _slice_rows(len(later))
    found = []
    for row in range(0, len(later), slice_rows):
        part = later[row : row + slice_rows]
        inside = (part >= low) & (part <= high)
        flags = buffer[: len(part) * columns].view(len(part), columns)
        above += torch.gt(part, high, out=flags).sum(0)
        rows, column = torch.nonzero(inside, as_tuple=True)
        found.append(torch.stack([rows + row, column]))
    return tuple(torch.cat(found, 1))  # type: ignore[return-value]


def _update_later_tops(
    later: Tensor, maxima: Tensor, start: int, stop: int, top_columns: Tensor, top_scores: Tensor
) -> None:
    """Merge a strip's column side into the running top lists of items ``stop…``; a column whose group
    ``maxima`` all stay at or below its current m-th best score cannot change its list and is skipped."""
    active = torch.nonzero((maxima > top_scores[stop:, -1]).any(0)).flatten()
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


def _slice_rows(rows: int) -> int:
    """Rows per slice when counting column-side scores above p: a quarter of the block."""
    return max(1, -(-rows // 4))


def _padded_height(rows: int, depth: int) -> tuple[int, int]:
    """``(rows rounded up to a multiple of the column side's row groups, that group count)``."""
    row_groups = group_count(rows, depth)
    return -(-rows // row_groups) * row_groups, row_groups


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


def _merge(top_columns: Tensor, top_scores: Tensor, rows: slice, columns: Tensor, scores: Tensor) -> None:
    """Keep, for ``rows`` of the running top lists, the best of the kept entries and the candidates."""
    merged = best_of(
        torch.cat([top_columns[rows], columns], 1),
        torch.cat([top_scores[rows], scores], 1),
        top_scores.shape[1],
    )
    top_columns[rows], top_scores[rows] = merged
