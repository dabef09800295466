"""A CLI fit logged to Weights & Biases offline, read back from the run's own files."""

import json
from pathlib import Path

import pytest
import yaml
from wandb.proto import wandb_internal_pb2

from lightning_dml.cli import DMLCLI, WANDB_CONFIG_FILE
from tests.conftest import REPO

#: Block size of the LevelDB log format that W&B's ``.wandb`` transaction log uses.
BLOCK = 32768
FULL, LAST = 1, 4


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file.

    wandb 0.2x ships no Python reader of its transaction log any more (the Go core writes it), and
    offline runs write no ``wandb-summary.json``; the format is LevelDB's log: after a 7-byte file header,
    32 KiB blocks of chunks (4-byte checksum, 2-byte little-endian length, 1-byte type), a record's
    chunks joined until a FULL or LAST chunk, each record one ``Record`` protobuf.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, position, payload = [], 7, b""
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def item_key(item) -> str:
    """The key of a history, summary or config item (flat or nested)."""
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def offline_run(quick_args, tmp_path, monkeypatch) -> tuple[DMLCLI, Path]:
    """A 2-step fit (then test) on the digits with the W&B logger config and ``log_model: true``.

    ``offline: true`` refuses ``log_model``; W&B's own offline switch (``WANDB_MODE=offline``) records the
    checkpoint artifacts in the run for a later ``wandb sync``, so the run is offline that way.
    """
    for variable in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [*quick_args, "--config", str(REPO / "configs/loggers/wandb.yaml")]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    args += ["--trainer.logger.init_args.offline", "false", "--trainer.logger.init_args.log_model", "true"]
    cli = DMLCLI(
        args=["fit", *args, "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1"]
    )
    cli.trainer.logger.experiment.finish()
    (run_dir,) = (tmp_path / "runs/wandb").glob("offline-run-*")
    return cli, run_dir


def read_run(run_dir: Path) -> dict[str, dict]:
    """The final summary, the history keys, the config, the saved files and the artifacts of a run."""
    run = {"summary": {}, "history": set(), "config": {}, "files": set(), "artifacts": []}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "summary":  # nested values (images) arrive leaf by leaf: "val/retrieval/_type"
            run["summary"] |= {item_key(item): json.loads(item.value_json) for item in record.summary.update}
        elif kind == "history":
            run["history"] |= {item_key(item) for item in record.history.item}
        elif kind == "config":
            run["config"] |= {item_key(item): json.loads(item.value_json) for item in record.config.update}
        elif kind == "files":
            run["files"] |= {file.path for file in record.files.files}
        elif kind == "artifact":
            run["artifacts"].append(record.artifact)
    return run


def test_offline_run_holds_every_metric_the_config_the_pictures_and_the_best_checkpoint(offline_run):
    cli, run_dir = offline_run
    run = read_run(run_dir)
    summary = run["summary"]

    logged = {key: float(value) for key, value in cli.trainer.callback_metrics.items()}
    assert {"test/map@r", "test/recall@1", "test/nmi"} <= logged.keys()
    for key, value in logged.items():  # the test metrics, as the run's final summary
        assert summary[key] == pytest.approx(value)
    validation = {f"{name}/{metric}" for name in ("val_seen", "val_test") for metric in ("map@r", "recall@1")}
    assert validation | {"train/loss"} <= run["history"]

    config = run["config"]
    assert config["model"]["class_path"] == "lightning_dml.methods.MetricLearning"
    assert config["trainer"]["logger"]["init_args"]["log_model"] is True
    assert WANDB_CONFIG_FILE in run["files"]
    saved = yaml.safe_load((run_dir / "files" / WANDB_CONFIG_FILE).read_text())
    assert saved["model"] == config["model"] and saved["evaluation"]["pictures"]["every_n_epochs"] == 1

    for name in ("val_seen", "val_test", "test"):
        assert summary[f"{name}/retrieval/_type"] == "images/separated"
        (image,) = summary[f"{name}/worst_queries/filenames"]
        assert (run_dir / "files" / image).is_file()

    checkpoint = cli.trainer.checkpoint_callback
    # the run keeps its config and checkpoints in its own folder, nothing in the save_dir all runs share
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"] == config["model"]
    assert Path(checkpoint.best_model_path).parent == run_dir / "checkpoints"
    assert sorted(path.name for path in run_dir.parent.parent.iterdir()) == ["wandb"]
    (best,) = [artifact for artifact in run["artifacts"] if "best" in artifact.aliases]
    metadata = json.loads(best.metadata)
    assert best.type == "model" and [entry.path for entry in best.manifest.contents] == ["model.ckpt"]
    assert metadata["original_filename"] == Path(checkpoint.best_model_path).name
    assert metadata["score"] == pytest.approx(float(checkpoint.best_model_score))


def test_log_model_is_refused_with_offline_true_as_the_config_comment_says(quick_args):
    args = [*quick_args, "--config", str(REPO / "configs/loggers/wandb.yaml")]
    with pytest.raises(ValueError, match="log_model=True and offline=True"):
        DMLCLI(args=[*args, "--trainer.logger.init_args.log_model", "true"], run=False)
