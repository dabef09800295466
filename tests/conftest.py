"""Shared fixtures: the repository root and quick CLI arguments."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def quick_args(tmp_path: Path) -> list[str]:
    """Arguments that make the quickstart config run in seconds, logging under ``tmp_path``."""
    return [
        "--config",
        str(REPO / "configs/quickstart.yaml"),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]
