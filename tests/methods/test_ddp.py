"""Under DDP (2 CPU processes, gloo), gathered embeddings train like one process with the whole batch."""

from pathlib import Path

import torch

from tests.conftest import run_module


def train(out: Path, world_size: int, batch_size: int, steps: int = 4) -> dict[str, torch.Tensor]:
    run_module("tests.methods.ddp_equivalence", str(out), str(world_size), str(batch_size), str(steps))
    return torch.load(out, weights_only=True)


def test_two_processes_of_batch_b_train_like_one_process_of_batch_2b(tmp_path):
    single = train(tmp_path / "single.pt", world_size=1, batch_size=16)
    distributed = train(tmp_path / "ddp.pt", world_size=2, batch_size=8)
    one_step = train(tmp_path / "one_step.pt", world_size=1, batch_size=16, steps=1)
    assert not torch.allclose(single["head.layers.0.weight"], one_step["head.layers.0.weight"])  # it trains
    for name, value in single.items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-9, atol=1e-12, msg=name)
