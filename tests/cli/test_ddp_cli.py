"""The CLI under 2-process DDP on the CPU (gloo): exact evaluation and checkpointing on a logged metric."""

from tests.cli.test_cli import run
from tests.conftest import tensorboard_scalars

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def printed_metrics(stdout: str) -> dict[str, str]:
    """The metric table that Lightning prints with ``--verbose true``, as exact strings."""
    rows = [line.split("│") for line in stdout.splitlines() if line.count("│") >= 3 and "/" in line]
    return {row[1].strip(): row[2].strip() for row in rows}


def test_two_process_validation_equals_one_process_exactly(quick_args):
    # Digits 4–9 are 1,077 images: not divisible by the 2 ranks nor by the batch of 100, so the distributed
    # sampler pads, and the padding must be dropped by index.
    args = [
        *quick_args,
        "--data.init_args.train_classes",
        "[0, 1, 2, 3]",
        "--data.init_args.validation",
        "[test]",
        "--data.init_args.eval_batch_size",
        "100",
    ]
    single = run("lightning-dml", "validate", *args, "--verbose", "true")
    distributed = run("lightning-dml", "validate", *args, *DDP, "--verbose", "true")
    assert single.returncode == 0 and distributed.returncode == 0, distributed.stderr[-3000:]
    assert "1077" in single.stderr  # the dataset summary (logged)
    metrics = printed_metrics(single.stdout)
    assert len(metrics) == 9 and "val/map@r" in metrics
    assert printed_metrics(distributed.stdout) == metrics


def test_two_process_fit_checkpoints_on_the_monitored_metric_and_tests(quick_args, tmp_path):
    result = run("lightning-dml", "fit", *quick_args, *DDP, "--trainer.max_epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = {p.name for p in (tmp_path / "runs/quickstart").glob("version_*/checkpoints/*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch=") for name in checkpoints)
    (summary,) = result.stdout.split("test summary")[1:]  # printed once, by rank 0
    assert "map@r" in summary


def test_two_process_reference_rows_equal_one_process_exactly(quick_args, tmp_path):
    # As above, digits 4–9 (1,077 images) pad the distributed sampler; the reference pass drops the padding
    args = [
        *quick_args,
        "--data.init_args.train_classes",
        "[0, 1, 2, 3]",
        "--data.init_args.eval_batch_size",
        "100",
        "--trainer.limit_train_batches",
        "1",
        "--test_after_fit",
        "false",
        "--evaluation.pictures.every_n_epochs",
        "0",
    ]
    logged = []
    for name, strategy in (("single", []), ("ddp", DDP)):
        save_dir = ["--trainer.logger.init_args.save_dir", str(tmp_path / name)]
        result = run("lightning-dml", "fit", *args, *save_dir, *strategy)
        assert result.returncode == 0, result.stderr[-3000:]
        scalars = tensorboard_scalars(tmp_path / name)
        logged.append({tag: steps for tag, steps in scalars.items() if tag.count("/") == 2})
    assert len(logged[0]) == 2 * 2 * 9  # val_seen, val_test × untrained, pixels × 9 metrics, at step 0
    assert logged[1] == logged[0]
