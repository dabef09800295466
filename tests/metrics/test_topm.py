import pytest
import torch

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


def test_group_size_balances_group_maxima_and_candidates():
    assert group_size(60_512, 11) == 64  # SOP: sqrt(5501) ≈ 74, capped at 64
    assert group_size(5_936, 59) == 8  # CUB: sqrt(100.6) ≈ 10
    assert group_size(100, 20) == 1  # too few entries per top item to group


@pytest.mark.parametrize("size", [1, 16])
def test_best_row_candidates_equal_a_full_top_k(size):
    block = torch.randn(50, 16 * 40, generator=torch.Generator().manual_seed(0))
    block[:, -9:] = -INF  # padding columns
    block[0, :-9] = -INF  # a row with no finite score at all
    columns, values = best_of(*row_candidates(block, row_group_maxima(block, size), 7), 7)
    expected_values, expected_columns = block.topk(7, dim=1)
    assert torch.equal(columns[1:], expected_columns[1:])
    assert torch.equal(values, expected_values)


@pytest.mark.parametrize("size", [1, 8])
def test_best_column_candidates_of_a_column_slice_equal_a_full_top_k(size):
    matrix = torch.randn(8 * 30, 100, generator=torch.Generator().manual_seed(1))
    matrix[-5:] = -INF  # padding rows
    block = matrix[:, 20:70]  # a strided view, as the column side of a strip
    columns = torch.tensor([0, 3, 4, 17, 49])  # a subset, as the columns a strip can still improve
    maxima = column_group_maxima(block, size)
    assert torch.equal(maxima, torch.stack([block[row : row + size].amax(0) for row in range(0, 240, size)]))
    rows, values = best_of(*column_candidates(block, maxima, 6, columns), 6)
    expected_values, expected_rows = block[:, columns].T.topk(6, dim=1)
    assert torch.equal(rows, expected_rows)
    assert torch.equal(values, expected_values)


def _brute_windows(block, low, high):
    """Per row: the count above ``high`` and the set of (row, column) within [low, high], entry by entry."""
    above = [sum(float(x) > float(high[r]) for x in row) for r, row in enumerate(block)]
    pairs = {
        (r, c)
        for r, row in enumerate(block)
        for c, x in enumerate(row)
        if float(low[r]) <= float(x) <= float(high[r])
    }
    return above, pairs


def _lattice_block(rows: int, columns: int, seed: int) -> torch.Tensor:
    """Scores on a lattice (so that thresholds meet entries exactly), with -inf padding columns."""
    block = torch.randint(0, 400, (rows, columns), generator=torch.Generator().manual_seed(seed)).float() / 8
    block[:, -6:] = -INF
    return block


@pytest.mark.parametrize("size", [1, 8])
@pytest.mark.parametrize("depth", ["shallow", "sparse", "dense"])
def test_row_windows_count_and_find_every_entry_like_a_scan(size, depth):
    block = _lattice_block(30, 8 * 200, seed=size)
    # Thresholds on lattice values, so entries equal to low and to high occur. Shallow rows have their whole
    # window in their top list of 7; deep ones pass it, with few groups reaching low (read one by one) or
    # most (whole rows read).
    top = block.topk(7, dim=1).values
    low = {"shallow": top[:, 2], "sparse": top[:, -1] - 0.25, "dense": top[:, -1] - 25.0}[depth]
    high = low + 0.25
    low[3], high[3] = INF, INF  # a lone row: nothing in its window or above it
    maxima = row_group_maxima(block, size)
    columns, scores = best_of(*row_candidates(block, maxima, 7), 7)
    above, rows, found = row_windows(block, maxima, columns, scores, low, high)
    expected_above, expected_pairs = _brute_windows(block, low, high)
    assert above.tolist() == expected_above
    assert sorted(zip(rows.tolist(), found.tolist(), strict=True)) == sorted(expected_pairs)


@pytest.mark.parametrize("size", [1, 8])
@pytest.mark.parametrize("spread", [0.25, 25.0])  # few groups reach low (read one by one) / most (slices)
def test_column_windows_count_and_find_every_entry_like_a_scan(size, spread):
    matrix = _lattice_block(60, 8 * 40, seed=3).T.contiguous()  # -inf padding rows
    block = matrix[:, 5:45]  # a strided view, as the column side of a strip
    low = block.amax(0) - spread
    low[torch.arange(40) % 8 != 0] = INF  # columns with nothing in their window or above it
    high = low + 0.25
    above = torch.zeros(40, dtype=torch.float64)
    rows, columns = column_windows(block, column_group_maxima(block, size), low, high, above)
    expected_above, expected_pairs = _brute_windows(block.T, low, high)
    assert above.tolist() == expected_above
    assert sorted(zip(columns.tolist(), rows.tolist(), strict=True)) == sorted(expected_pairs)
