"""The G-DML paper's baselines are trained exactly like its student (the paper: SGD, clipping by value 0.1,
weight decay 1e-4, random batches without a miner, raw 2-D outputs), read from the configs as built."""

import pytest
import torch

from lightning_dml.cli import DMLCLI
from lightning_dml.data import ClassPairTriplets, RandomBatches
from lightning_dml.data.pair_triplets import ClassPairTripletSampler
from lightning_dml.losses import BatchTriplets
from tests.conftest import REPO

DATASETS = ["fashion_mnist", "mnist", "cifar10"]
LOSSES = ["contrastive", "triplet", "margin", "multi_similarity"]


def built(*configs: str) -> DMLCLI:
    """The CLI of the stacked configs (paths below configs/), built but not run."""
    args = [item for config in configs for item in ("--config", str(REPO / "configs" / config))]
    return DMLCLI(args=args, run=False)


def paper_values(dataset: str) -> list[str]:
    """The dataset's config and its overlay of the paper's student and baseline values (MNIST: none)."""
    return [f"data/{dataset}.yaml", *([f"gdml/{dataset}.yaml"] if dataset != "mnist" else [])]


def student_configs(dataset: str) -> list[str]:
    """The stack of the G-DML student on ``dataset``."""
    data, *overlay = paper_values(dataset)
    return [data, "gdml/student.yaml", *overlay]


def baseline_configs(dataset: str, loss: str) -> list[str]:
    """The stack of a paper baseline with ``loss`` on ``dataset`` (a configs/losses/ file without its miner,
    or the authors' Triplet-Network)."""
    data, *overlay = paper_values(dataset)
    loss_configs = (
        ["gdml/baselines/triplet_network.yaml"]
        if loss == "triplet_network"
        else [f"losses/{loss}.yaml", "gdml/baselines/without_miner.yaml"]
    )
    return [data, "gdml/baselines/base.yaml", *overlay, *loss_configs]


def recipe(cli: DMLCLI) -> dict:
    """What the paper fixes for the student and its baselines, from the built trainer, model and data."""
    configured = cli.model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    return {
        "optimizer": (type(optimizer), optimizer.defaults["lr"], optimizer.defaults["weight_decay"]),
        "momentum": optimizer.defaults["momentum"],
        "clipping": (cli.trainer.gradient_clip_val, cli.trainer.gradient_clip_algorithm),
        "scheduler": (type(scheduler), scheduler.factor, scheduler.patience),
        "monitor": configured["lr_scheduler"]["monitor"],
        "batches": cli.datamodule.sampler,
        "epochs": cli.trainer.max_epochs,
        "output": (cli.model.head.embedding_size, cli.model.head.normalize),
    }


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("loss", LOSSES)
def test_each_baseline_trains_like_the_student_without_a_miner(dataset, loss):
    student = recipe(built(*student_configs(dataset)))
    baseline_cli = built(*baseline_configs(dataset, loss))
    assert recipe(baseline_cli) == student
    assert student["optimizer"][1:] == (0.1, 0.0001) and student["clipping"] == (0.1, "value")
    assert isinstance(student["batches"], RandomBatches) and student["output"] == (2, False)
    assert baseline_cli.model.miner is None and type(baseline_cli.model.loss).__name__.lower().startswith(
        loss.split("_")[0][:5]
    )


def test_the_triplet_network_baseline_is_the_authors_recipe():
    cli = built(*baseline_configs("fashion_mnist", "triplet_network"))
    baseline, student = recipe(cli), recipe(built(*student_configs("fashion_mnist")))
    # TripletNetwork_Fashion.py: SGD 0.1, weight decay 1e-4, clip 0.1, ReduceLROnPlateau(0.2, patience 3)
    assert baseline["optimizer"] == student["optimizer"] and baseline["clipping"] == student["clipping"]
    assert baseline["scheduler"][1:] == (0.2, 3) and baseline["output"] == (2, False)
    assert cli.datamodule.sampler == ClassPairTriplets(triplets_per_pair=512, shuffle=True)
    assert isinstance(cli.model.miner, BatchTriplets)
    loss = cli.model.loss
    assert loss.margin == 3.0 and not loss.distance.normalize_embeddings


def test_the_triplet_network_stack_trains_on_shuffled_class_pair_triplets(tmp_path, one_thread):
    cli = DMLCLI(
        args=[
            "fit",
            *(
                f"--config={REPO / 'configs' / config}"
                for config in baseline_configs("fashion_mnist", "triplet_network")
            ),
            "--data.class_path",
            "lightning_dml.data.Digits",
            "--data.init_args.sampler.init_args.triplets_per_pair",
            "8",
            "--model.init_args.backbone.class_path",
            "lightning_dml.models.SmallCNN",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--test_after_fit",
            "false",
        ]
    )
    sampler = cli.trainer.train_dataloader.batch_sampler
    assert isinstance(sampler, ClassPairTripletSampler) and sampler.shuffle_triplets
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
