"""``lightning-dml``: the LightningCLI of the project (fit / validate / test / predict)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_dml.callbacks import (
    EmbeddingWriter,
    LatestAndBestCheckpoint,
    RetrievalEvaluation,
    RunSummary,
)
from lightning_dml.callbacks.run_summary import shared_log_directory
from lightning_dml.cli_errors import OneLineErrorParser
from lightning_dml.cli_facts import fill_facts, fill_normalisation
from lightning_dml.data.datamodule import RetrievalDataModule
from lightning_dml.errors import LightningDMLError
from lightning_dml.methods import RetrievalModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lightning_dml"},
    },
    # The class-balanced batch sampler and the evaluation loaders shard themselves across DDP ranks.
    "use_distributed_sampler": False,
    # Where checkpoints go without a logger: not the working directory.
    "default_root_dir": "runs",
}

#: Loggers whose run folder is ``save_dir/name/version``: evaluation-only commands log beside the run.
FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")

#: Name of the resolved CLI config among a W&B run's files (wandb keeps its own ``config.yaml`` there).
WANDB_CONFIG_FILE = "lightning_dml_config.yaml"


class SaveAndLogConfig(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's folder (a W&B run's own folder, not the
    ``save_dir`` all runs share; nothing without a logger) and logs it to every ``WandbLogger``: as the
    run's config (searchable in the dashboard) and as the run file ``lightning_dml_config.yaml``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write the config into the run folder on rank 0, then log it (LightningCLI's flow, but with
        :func:`shared_log_directory` instead of ``trainer.log_dir``)."""
        if self.already_saved or not trainer.loggers:
            return
        directory = shared_log_directory(trainer)
        if trainer.is_global_zero:
            Path(directory).mkdir(parents=True, exist_ok=True)
            path = Path(directory, self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved YAML config to the W&B loggers of the trainer."""
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run.config.update(yaml.safe_load(text), allow_val_change=True)
                path = Path(run.dir, WANDB_CONFIG_FILE)
                path.write_text(text)
                run.save(str(path), base_path=run.dir, policy="now")


class KeyMetricProgressBar(RichProgressBar):
    """Rich progress bar that also shows the checkpoint callback's monitored metric (the run's key metric)."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """The default progress bar items plus the latest value of the checkpoint monitor."""
        items = super().get_metrics(trainer, pl_module)
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        if monitor in trainer.callback_metrics:
            items[monitor] = float(trainer.callback_metrics[monitor])
        return items


class DMLCLI(LightningCLI):
    """LightningCLI with retrieval evaluation and checkpointing always on, and omegaconf interpolation.

    Model and data are chosen by ``class_path`` (any ``RetrievalModule`` / ``RetrievalDataModule``). Three
    sections are added: ``evaluation`` (the ``RetrievalEvaluation`` callback, which also draws the pictures;
    ``--evaluation.pictures.every_n_epochs 0`` turns them off), ``checkpoint`` (a
    ``LatestAndBestCheckpoint`` keeping the best by ``val/map@r`` and the latest epoch as ``last.ckpt``)
    and ``prediction`` (the ``EmbeddingWriter``: ``predict`` writes ``embeddings.npz`` in the run folder). The
    resolved config is also logged to W&B when a ``WandbLogger`` is used, and a run summary is printed at
    the end. ``fit`` ends with ``test`` on the best checkpoint unless ``--test_after_fit false``. A
    configuration mistake ends in one line on stderr (:class:`~lightning_dml.cli_errors.OneLineErrorParser`).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(
            RetrievalModule,
            RetrievalDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
            parser_kwargs={"parser_mode": "omegaconf"},
            save_config_callback=SaveAndLogConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the evaluation, checkpoint and prediction sections and ``test_after_fit``."""
        parser.add_lightning_class_args(RetrievalEvaluation, "evaluation")
        parser.add_lightning_class_args(LatestAndBestCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EmbeddingWriter, "prediction")  # acts in predict only
        parser.set_defaults(
            {"checkpoint.monitor": "val/map@r", "checkpoint.mode": "max", "checkpoint.save_last": True}
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="Run test on the best checkpoint."
        )

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        """LightningCLI's subcommand parser, with ``verbose`` off: the run summary prints each metric once
        per set, where Lightning's table repeats every set's metrics under every dataloader."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            parser.set_defaults(verbose=False)
        return parser

    def before_instantiate_classes(self) -> None:
        """Place the run's logs: ``fit --ckpt_path last`` resumes the newest run of this logger in its own
        version folder; ``validate``/``test``/``predict`` of a checkpoint in ``<run>/checkpoints/`` log to
        ``<run>/<subcommand>/``."""
        config = self.config.get(self.subcommand, self.config)
        logger = config.trainer.get("logger")
        if not isinstance(logger, Namespace) or not logger.class_path.endswith(FOLDER_LOGGERS):
            return
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            resume_newest_run(logger.init_args, config)
        elif self.subcommand != "fit" and config.get("ckpt_path"):
            checkpoint = Path(config.ckpt_path)
            if checkpoint.parent.name == "checkpoints":
                logger.init_args.save_dir, logger.init_args.name = str(checkpoint.parent.parent), ""
                logger.init_args.version = self.subcommand

    def instantiate_classes(self) -> None:
        """Instantiate the data module first and write the facts it knows into the model's config
        (:func:`~lightning_dml.cli_facts.fill_facts`), then the rest; that data module is the run's (the
        parser builds a second one, never set up, which is dropped: the config must stay free of objects).
        Last, the data takes the built backbone's normalisation (:func:`~lightning_dml.cli_facts.
        fill_normalisation`), recorded in the config before the run saves it (the trainer's ``setup``)."""
        config = self.config.get(str(self.subcommand), self.config)
        datamodule = self._parser(self.subcommand).instantiate_classes(Namespace(data=config.data)).data
        fill_facts(config.model, datamodule)
        vars(self).pop("config_dump", None)  # LightningCLI's dump of the config, taken before the facts
        super().instantiate_classes()
        self.config_init.get(str(self.subcommand), self.config_init).data = self.datamodule = datamodule
        fill_normalisation(config.data, self.model, datamodule)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Build the trainer with the run summary, and a rich progress bar showing the key metric unless the
        config disables or chooses a progress bar."""
        config = self._get(self.config_init, "trainer", default={})
        test_follows = self.subcommand == "fit" and self.config[self.subcommand].get("test_after_fit", True)
        callbacks = [*(config.get("callbacks") or []), RunSummary(test_follows=test_follows)]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(KeyMetricProgressBar())
        kwargs.setdefault("callbacks", callbacks)
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Test the best checkpoint (or the final weights when none was saved)."""
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        self.trainer.test(
            self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True, verbose=False
        )


def resume_newest_run(logger_args: Namespace, config: Namespace) -> None:
    """Point the logger at the newest ``version_N`` of its ``save_dir/name`` holding a ``last.ckpt`` and
    resume from that checkpoint (unless the logger's version is set)."""
    if "save_dir" not in logger_args or logger_args.get("version") is not None:
        return
    runs = Path(logger_args.save_dir, logger_args.get("name") or "").glob("version_*/checkpoints/last.ckpt")
    versions = {int(path.parts[-3].removeprefix("version_")): path for path in runs}
    if versions:
        logger_args.version = max(versions)
        config.ckpt_path = str(versions[logger_args.version])


def main(args: list[str] | None = None) -> None:
    """Console entry point: run the CLI, printing project errors as one line."""
    try:
        DMLCLI(args=args)
    except LightningDMLError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
