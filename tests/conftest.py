"""Shared fixtures: the repository root and quick CLI arguments."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def quick_cli_args(runs: Path, config: str = "configs/quickstart.yaml") -> list[str]:
    """Arguments that make a config run one quiet epoch in seconds, logging under ``runs``."""
    return [
        "--config",
        str(REPO / config),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(runs),
    ]


def summary_rows(text: str) -> dict[str, list[str]]:
    """The rows of a printed summary panel: first cell -> the other cells."""
    cells = [line.strip("│ ").split() for line in text.splitlines()]
    return {cell[0]: cell[1:] for cell in cells if cell}


def table_rows(text: str, first: str) -> int:
    """How many printed table rows start with the cell ``first``."""
    return sum(line.strip("│ ").split()[:1] == [first] for line in text.splitlines())


@pytest.fixture
def quick_args(tmp_path: Path) -> list[str]:
    """:func:`quick_cli_args` for the quickstart config, logging under ``tmp_path``."""
    return quick_cli_args(tmp_path / "runs")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine torch's second thread mostly waits (25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
