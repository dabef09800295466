"""Readouts in the CLI's evaluation section: parsed into specs, logged for every set, summarised."""

import yaml

from lightning_dml.callbacks import RunSummary
from lightning_dml.cli import DMLCLI
from lightning_dml.models import Readout

READOUTS_YAML = """
evaluation:
  readouts:
    gap: {layer: backbone.blocks.1}
    grid2: {layer: backbone.blocks.1, pooling: grid, size: 2, max_dim: 32}
"""


def test_readouts_from_yaml_are_logged_for_every_set_and_summarised(quick_args, tmp_path, capsys, one_thread):
    config = tmp_path / "readouts.yaml"
    config.write_text(READOUTS_YAML)
    args = ["fit", *quick_args, "--config", str(config), "--trainer.limit_train_batches", "2"]
    cli = DMLCLI(args=args)
    readouts = cli.config_init.fit.evaluation.readouts
    assert readouts["grid2"] == Readout("backbone.blocks.1", pooling="grid", size=2, max_dim=32)
    summary = next(callback for callback in cli.trainer.callbacks if isinstance(callback, RunSummary))
    metrics = set(cli.trainer.callback_metrics) | set(summary.best)  # the test's, the best validation's
    for name in ("val_seen", "val_test", "test"):
        assert {f"{name}/map@r", f"{name}/gap/map@r", f"{name}/grid2/map@r", f"{name}/gap/nmi"} <= set(
            metrics
        )
    assert "grid2/map@r" in capsys.readouterr().out  # a row of the run summary
    saved = yaml.safe_load(next((tmp_path / "runs").rglob("config.yaml")).read_text())
    assert saved["evaluation"]["readouts"]["grid2"]["pooling"] == "grid"
