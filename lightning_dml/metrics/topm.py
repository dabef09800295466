"""The m highest scores of every row (or column) of a score block, and the entries near a threshold,
via group maxima.

Group j of a row holds its entries jS … jS + S - 1 (S entries per group). A row's top m entries lie in its
m groups with the highest maxima, so one vectorised max over the groups and a top-k over ``m × S``
candidates replace a top-k over the whole row: torch's CPU ``topk`` costs more per entry than the
comparisons it replaces. Likewise, only groups whose maximum reaches a threshold can hold entries above
it. (Consecutive groups: a max over the last dimension is about twice as fast as over interleaved ones.)
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Most entries per group.
MAX_GROUP = 64
#: A deep row's groups are read one by one unless that reads over 1/SPARSE_READS of its entries: a gathered
#: entry costs several times a scanned one.
SPARSE_READS = 8


def group_size(length: int, m: int) -> int:
    """Entries per group: a power of two near sqrt(length / m), at most ``MAX_GROUP``. It balances the
    top-m search over ``length / size`` group maxima against the one over ``m × size`` candidates; 1 when
    ``m`` is so large that grouping would not pay."""
    size = 1
    while size * 2 <= min(MAX_GROUP, (length / max(m, 1)) ** 0.5):
        size *= 2
    return size if size >= 4 else 1


def row_group_maxima(block: Tensor, size: int) -> Tensor:
    """``(rows, length / size)``: the maximum of each row's groups of ``size`` consecutive columns;
    ``block`` itself when ``size == 1``. The row length must be a multiple of ``size``."""
    if size == 1:
        return block
    rows, length = block.shape
    return block.view(rows, length // size, size).amax(2)


def row_candidates(block: Tensor, maxima: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``(columns, values)`` of each row's candidates, ``(rows, c)`` each: a set of ``c`` entries that
    holds the row's ``m`` highest, from the block's ``row_group_maxima`` (``c = m × size``; with groups
    of one, exactly the top m)."""
    rows, length = block.shape
    size = length // maxima.shape[1]
    if size == 1:
        values, columns = block.topk(min(m, length), dim=1, sorted=False)
        return columns, values
    best_groups = maxima.topk(m, dim=1, sorted=False).indices
    candidates = _members(best_groups, size).view(rows, -1)
    return candidates, block.gather(1, candidates)


def column_group_maxima(block: Tensor, size: int) -> Tensor:
    """``(length / size, columns)``: the maximum of each column's groups of ``size`` consecutive rows;
    ``block`` itself when ``size == 1``. ``block`` may be a column slice of a larger matrix; its row count
    must be a multiple of ``size``."""
    if size == 1:
        return block
    return block.view(-1, size, block.shape[1]).amax(1)


def column_candidates(block: Tensor, maxima: Tensor, m: int, columns: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, values)`` of the candidates of ``block``'s ``columns``, ``(len(columns), c)`` each, as
    ``row_candidates``, from the block's ``column_group_maxima``."""
    size = len(block) // len(maxima)
    values, best_groups = maxima[:, columns].T.contiguous().topk(min(m, len(maxima)), dim=1, sorted=False)
    if size == 1:
        return best_groups, values
    candidates = _members(best_groups, size).view(len(columns), -1)
    return candidates, block[candidates, columns[:, None]]


def _members(groups: Tensor, size: int) -> Tensor:
    """``groups.shape + (size,)``: the positions in each group of ``size`` consecutive entries."""
    return groups[..., None] * size + torch.arange(size, device=groups.device)


def best_of(indices: Tensor, values: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The ``m`` highest ``values`` of each row, best first, with their ``indices``."""
    values, picked = values.topk(m, dim=1)
    return indices.gather(1, picked), values


def column_windows(
    block: Tensor, maxima: Tensor, low: Tensor, high: Tensor, above: Tensor
) -> tuple[Tensor, Tensor]:
    """Add to ``above[j]`` the entries of ``block``'s column j above ``high[j]``; return ``(rows, columns)``
    of its entries within ``[low[j], high[j]]``. ``maxima``: ``column_group_maxima(block, size)``.

    Only groups whose maximum reaches ``low`` can hold such entries, and usually few do: those are read one
    by one. When many do (poor embeddings), whole slices of rows are compared instead.
    """
    columns = maxima.shape[1]
    size = len(block) // len(maxima)
    reaching = maxima >= low
    hits = int(reaching.count_nonzero())  # far faster than a sum of booleans
    if hits * size * 32 < block.numel():  # row indices then take at most 1/16 of the block's bytes
        group, column = torch.nonzero(reaching, as_tuple=True)
        rows = _members(group, size)
        values = block[rows, column[:, None]]
        above.index_add_(0, column, (values > high[column, None]).sum(1).to(above.dtype))
        inside = (values >= low[column, None]) & (values <= high[column, None])
        pair, slot = torch.nonzero(inside, as_tuple=True)
        return rows[pair, slot], column[pair]
    slice_rows = max(1, -(-len(block) // 4))
    flags = block.new_empty(min(slice_rows, len(block)) * columns)
    found = []
    for row in range(0, len(block), slice_rows):
        part = block[row : row + slice_rows]
        inside = (part >= low) & (part <= high)
        # float flags: a float sum over rows is far faster than a sum of booleans, exact below 2^24 rows
        above += torch.gt(part, high, out=flags[: part.numel()].view(part.shape)).sum(0)
        rows, column = torch.nonzero(inside, as_tuple=True)
        found.append(torch.stack([rows + row, column]))
    return tuple(torch.cat(found, 1))  # type: ignore[return-value]


def row_windows(
    block: Tensor, maxima: Tensor, columns: Tensor, scores: Tensor, low: Tensor, high: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(above, rows, columns)``: per row of ``block``, its count of entries above ``high`` (float64), and
    the (row, column) entries within ``[low, high]`` (``low``, ``high``: ``(rows,)``).

    ``columns``, ``scores``: each row's exact top list, best first. A row whose list ends below ``low`` is
    answered from its list. The others (*deep* rows) read only the groups whose maximum (``maxima``,
    from ``row_group_maxima``) reaches ``low``, or their whole row where many do.
    """
    deep = scores[:, -1] >= low
    above = (scores > high[:, None]).sum(1).masked_fill_(deep, 0).double()
    listed = (scores >= low[:, None]) & (scores <= high[:, None]) & ~deep[:, None]
    row, slot = torch.nonzero(listed, as_tuple=True)
    found_rows, found_columns = [row], [columns[row, slot]]
    deep_rows = torch.nonzero(deep).flatten()
    if len(deep_rows):
        size = block.shape[1] // maxima.shape[1]
        reaching = maxima[deep_rows] >= low[deep_rows, None]
        if int(reaching.count_nonzero()) * size * SPARSE_READS < len(deep_rows) * block.shape[1]:
            row, group = torch.nonzero(reaching, as_tuple=True)
            row, column = deep_rows[row], _members(group, size)
            values = block[row[:, None], column]
        else:
            row, column = deep_rows, None
            values = block[deep_rows]
        inside = (values >= low[row, None]) & (values <= high[row, None])
        sum_dtype = torch.float64 if values.shape[1] >= 2**24 else None  # float32 counts exact below 2^24
        above.index_add_(0, row, values.gt_(high[row, None]).sum(1, dtype=sum_dtype).to(above.dtype))
        pair, slot = torch.nonzero(inside, as_tuple=True)
        found_rows.append(row[pair])
        found_columns.append(slot if column is None else column[pair, slot])
    return above, torch.cat(found_rows), torch.cat(found_columns)
