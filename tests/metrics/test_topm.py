import pytest
import torch

from lightning_dml.metrics.topm import (
    best_of,
    column_candidates,
    column_group_maxima,
    group_count,
    row_candidates,
)

INF = float("inf")


def test_group_count_balances_group_maxima_and_candidates():
    assert group_count(60_512, 11) == 64  # SOP: sqrt(5501) ≈ 74, capped at 64
    assert group_count(5_936, 59) == 8  # CUB: sqrt(100.6) ≈ 10
    assert group_count(100, 20) == 1  # too few entries per top item to group


@pytest.mark.parametrize("groups", [1, 16])
def test_best_row_candidates_equal_a_full_top_k(groups):
    block = torch.randn(50, 16 * 40, generator=torch.Generator().manual_seed(0))
    block[:, -9:] = -INF  # padding columns
    block[0, :-9] = -INF  # a row with no finite score at all
    columns, values = best_of(*row_candidates(block, 7, groups), 7)
    expected_values, expected_columns = block.topk(7, dim=1)
    assert torch.equal(columns[1:], expected_columns[1:])
    assert torch.equal(values, expected_values)


@pytest.mark.parametrize("groups", [1, 8])
def test_best_column_candidates_of_a_column_slice_equal_a_full_top_k(groups):
    matrix = torch.randn(8 * 30, 100, generator=torch.Generator().manual_seed(1))
    matrix[-5:] = -INF  # padding rows
    block = matrix[:, 20:70]  # a strided view, as the column side of a strip
    columns = torch.tensor([0, 3, 4, 17, 49])  # a subset, as the columns a strip can still improve
    maxima = column_group_maxima(block, groups)
    assert torch.equal(maxima, block.view(groups, 30 * 8 // groups, 50).amax(0))
    rows, values = best_of(*column_candidates(block, maxima, 6, columns), 6)
    expected_values, expected_rows = block[:, columns].T.topk(6, dim=1)
    assert torch.equal(rows, expected_rows)
    assert torch.equal(values, expected_values)
