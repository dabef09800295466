"""Every epoch is trained in full and validated, ``last.ckpt`` is the latest epoch, and ``--ckpt_path last``
resumes after the last completed epoch."""

import lightning as L
import pytest
import torch

from lightning_dml.cli import DMLCLI
from tests.conftest import DEML_DIGITS, GDML_DIGITS_STUDENT, GDML_DIGITS_TEACHER, data_module_of

DIGITS_CONFIGS = [
    ("configs/quickstart.yaml",),
    DEML_DIGITS,
    GDML_DIGITS_TEACHER,
    GDML_DIGITS_STUDENT,
]


class Record(L.Callback):
    """Records the epochs trained and validated and the batches of each; raises in the middle of epoch
    ``kill_at``, as a killed run stops."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.batches: dict[int, int] = {}
        self.validated: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches[trainer.current_epoch] = batch_idx + 1
        if trainer.current_epoch == self.kill_at and batch_idx == 2:
            raise RuntimeError("killed")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated.append(trainer.current_epoch)


def fit(args: list[str], record: Record) -> DMLCLI:
    """``lightning-dml fit ARGS`` (no test, no pictures) with ``record`` among the callbacks."""

    class RecordingCLI(DMLCLI):
        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(record)
            return trainer

    return RecordingCLI(
        args=["fit", *args, "--test_after_fit", "false", "--evaluation.pictures.every_n_epochs", "0"]
    )


def epoch_of(path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


PAIR_TRIPLETS = [
    "--data.init_args.sampler=lightning_dml.data.ClassPairTriplets",
    "--data.init_args.sampler.init_args.triplets_per_pair=8",
]


@pytest.mark.parametrize("sampler", [[], PAIR_TRIPLETS], ids=["class_balanced", "class_pair_triplets"])
def test_every_epoch_trains_all_its_batches_and_is_validated(quick_args, sampler):
    record = Record()
    cli = fit([*quick_args, "--trainer.max_epochs", "4", *sampler], record)
    assert record.validated == [0, 1, 2, 3]
    assert record.batches == dict.fromkeys(range(4), cli.trainer.num_training_batches)


@pytest.mark.parametrize("configs", DIGITS_CONFIGS, ids=lambda configs: configs[-1])
def test_each_digits_configs_training_loader_has_one_length_in_every_epoch(configs):
    data = data_module_of(*configs)
    data.setup("fit")
    loader = data.train_dataloader()
    lengths = set()
    for epoch in range(8):
        loader.batch_sampler.set_epoch(epoch)
        lengths |= {len(loader), sum(1 for _ in loader.batch_sampler)}
    assert len(lengths) == 1


def test_a_killed_fit_resumes_after_its_last_completed_epoch(quick_args, tmp_path):
    # the best checkpoint by lowest epoch stays at epoch 0; last.ckpt must move on regardless
    best_stays = ["--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"]
    args = [*quick_args, "--trainer.max_epochs", "4", *best_stays]
    with pytest.raises(RuntimeError, match="killed"):
        fit(args, Record(kill_at=2))
    checkpoints = tmp_path / "runs/quickstart/version_0/checkpoints"
    assert epoch_of(checkpoints / "last.ckpt") == 1
    resumed = Record()
    cli = fit([*args, "--ckpt_path", "last"], resumed)
    assert list(resumed.batches) == resumed.validated == [2, 3]
    assert cli.trainer.global_step == 4 * cli.trainer.num_training_batches
    assert epoch_of(checkpoints / "last.ckpt") == 3
    assert [epoch_of(path) for path in checkpoints.glob("epoch=*.ckpt")] == [0]
