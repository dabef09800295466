"""Sharded evaluation in the callback: 2 gloo processes, sharded, log exactly what one process logs,
gathered or sharded, on leave-one-out digits (padded by the sampler) and a query-vs-gallery set."""

from pathlib import Path

import torch

from tests.conftest import run_module


def logged(out: Path, world_size: int, sharded: str) -> dict[str, float]:
    run_module("tests.callbacks.sharded_evaluation_run", str(out), str(world_size), sharded)
    return torch.load(out, weights_only=True)


def test_two_sharded_processes_log_what_one_process_logs(tmp_path):
    gathered = logged(tmp_path / "gathered.pt", 1, "off")
    assert len(gathered) == 2 * 10 and "val/map@r" in gathered and "test/1nn_macro_f1" in gathered
    assert logged(tmp_path / "one_shard.pt", 1, "on") == gathered
    assert logged(tmp_path / "ddp.pt", 2, "on") == gathered
