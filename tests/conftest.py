"""Shared fixtures: the repository root and quick CLI arguments."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


#: DeML's small-CNN recipe on the bundled digits: the dataset, the recipe, the digits overlay.
DEML_DIGITS = ("configs/data/digits.yaml", "configs/deml/small_cnn.yaml", "configs/deml/digits.yaml")
#: The G-DML stages on the bundled digits: the dataset, the stage's recipe, the digits overlay.
GDML_DIGITS_TEACHER = (
    "configs/data/digits.yaml",
    "configs/gdml/teacher.yaml",
    "configs/gdml/digits_teacher.yaml",
)
GDML_DIGITS_STUDENT = (
    "configs/data/digits.yaml",
    "configs/gdml/student.yaml",
    "configs/gdml/digits_student.yaml",
)


def config_args(*configs: str) -> list[str]:
    """``--config`` arguments stacking ``configs`` (paths below the repository), in order."""
    return [item for config in configs for item in ("--config", str(REPO / config))]


def quick_cli_args(runs: Path, *configs: str) -> list[str]:
    """Arguments that make stacked configs (default: the quickstart) run one quiet epoch in seconds, logging
    under ``runs``."""
    return [
        *config_args(*(configs or ("configs/quickstart.yaml",))),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(runs),
    ]


def run_module(module: str, *args: str) -> None:
    """Run ``python -m MODULE ARGS`` from the repository root (a DDP script: Lightning starts its other
    processes), asserting that it succeeds."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]


def data_module_of(*configs: str) -> Any:
    """The data module of stacked ``configs`` (paths below the repository), instantiated as the CLI does (not
    set up)."""
    from jsonargparse import ArgumentParser

    from lightning_dml.data import RetrievalDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(RetrievalDataModule, "data")
    parsed = None
    for config in configs:
        spec = yaml.safe_load((REPO / config).read_text()).get("data")
        if spec:
            parsed = parser.parse_object({"data": spec}, namespace=parsed)
    return parser.instantiate(parsed).data


def summary_rows(text: str) -> dict[str, list[str]]:
    """The rows of the first table of a printed summary panel (up to its first blank line): first cell ->
    the other cells."""
    rows = {}
    for line in text.splitlines():
        cells = line.strip("│ ").split()
        if not cells and rows:
            break
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def reference_rows(text: str) -> dict[str, list[str]]:
    """The rows of the reference table of a printed summary panel (after its "before training" line)."""
    return summary_rows(text.split("before training")[1].split("\n", 1)[1])


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar logged to the TensorBoard event files under ``folder``: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(folder.rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(events)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update(
                (event.step, event.value) for event in accumulator.Scalars(tag)
            )
    return scalars


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
