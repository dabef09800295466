"""Reference rows: the untrained network and raw pixels, evaluated before training, checked by brute force."""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.callbacks.retrieval_evaluation import PIXEL_LIMIT
from lightning_dml.callbacks.run_summary import references_table
from lightning_dml.cli import DMLCLI
from lightning_dml.data import ClassBalanced, Digits, Transforms
from lightning_dml.errors import ConfigError
from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.methods import MetricLearning
from lightning_dml.metrics import clustering_metrics
from lightning_dml.models import Readout, SmallCNN
from tests.reference import brute_force_metrics, embed_loader

REFERENCES = ["untrained", "pixels"]


def fit(
    data: Digits, references=REFERENCES, readouts=None, **trainer_args
) -> tuple[RetrievalEvaluation, MetricLearning, MetricLearning]:
    """Fit a small seeded network on ``data`` (one epoch unless ``trainer_args`` say otherwise) with reference
    rows; return the evaluation, a copy of the network as it was before training, and the trained network."""
    L.seed_everything(0)
    model = MetricLearning(SmallCNN(1, widths=(8, 16)), BinomialDevianceLoss(), embedding_size=8)
    initial = copy.deepcopy(model)
    evaluation = RetrievalEvaluation(recall_at=[1, 4], seed=0, references=references, readouts=readouts)
    trainer = L.Trainer(
        callbacks=[evaluation],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"max_epochs": 1, **trainer_args},
    )
    trainer.fit(model, datamodule=data)
    return evaluation, initial, model


def expected_rows(features: torch.Tensor, items: dict, labels: torch.Tensor) -> dict[str, float]:
    """Float64 brute-force retrieval metrics of ``features`` and k-means (seed 0) on the query items."""
    roles = items.get("is_query"), items.get("is_gallery")
    queries = torch.ones(len(labels), dtype=torch.bool) if roles[0] is None else torch.as_tensor(roles[0]) > 0
    retrieval = brute_force_metrics(features.double(), labels, *roles, recall_at=(1, 4))
    return retrieval | clustering_metrics(features[queries], labels[queries], seed=0)


def hand_made_rows(initial: MetricLearning, data: Digits) -> dict[str, float]:
    """Every validation set's reference rows recomputed by hand: the copied initial network's embeddings,
    and the images flattened, centred on their mean and L2-normalised here."""
    rows = {}
    for name, loader in zip(data.val_sets, data.val_dataloader(), strict=True):
        items = embed_loader(initial, loader)
        labels = torch.as_tensor(items["label"]).long()
        images = torch.cat([batch["image"] for batch in loader]).flatten(1)
        centred = images - images.mean(dim=0)
        pixels = centred / centred.norm(dim=1, keepdim=True)
        untrained = torch.as_tensor(items["embeddings"]).float()  # float32 values, as the network gave them
        for reference, features in (("untrained", untrained), ("pixels", pixels)):
            expected = expected_rows(features, items, labels)
            rows |= {f"{name}/{reference}/{key}": value for key, value in expected.items()}
    return rows


@pytest.mark.parametrize(
    "protocol, test_gallery, validation",
    [("zero_shot", "test_images", ["seen", "test"]), ("closed_set", "training_images", ["test"])],
    ids=["leave-one-out", "query-vs-gallery"],
)
def test_reference_rows_equal_brute_force_on_the_initial_network_and_hand_centred_pixels(
    protocol, test_gallery, validation, one_thread
):
    data = Digits(
        validation=validation, protocol=protocol, test_gallery=test_gallery, sampler=ClassBalanced(4, 16)
    )
    evaluation, initial, _ = fit(data, limit_train_batches=2)
    expected = hand_made_rows(initial, data)
    assert set(evaluation.reference_metrics) == set(expected)
    assert evaluation.reference_metrics == pytest.approx(expected, abs=1e-6)
    if test_gallery == "training_images":  # test queries among training images: a query/gallery set
        assert len(data.val_sets["val"]) == 1797 and data.val_sets["val"].is_query.sum() < 1797


@pytest.mark.parametrize("sanity_steps", [0, 2])
def test_training_is_bit_identical_with_and_without_reference_rows(sanity_steps, one_thread):
    # Digits' augmentation draws from torch's global generator: a reference pass that consumed random
    # numbers (each data loader iterator draws a seed) would change every later augmented batch.
    weights = []
    for references in ([], REFERENCES):
        data = Digits(validation=["seen", "test"], sampler=ClassBalanced(4, 16))
        evaluation, _, model = fit(data, references, max_epochs=2, num_sanity_val_steps=sanity_steps)
        assert bool(evaluation.reference_metrics) == bool(references)
        assert all(module.training for module in model.modules())  # training modes given back
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_pixels_refuses_large_images_before_training(one_thread):
    large = Transforms(image_size=72, resize=72, crop="random")  # evaluation: resize to 72, centre crop 72
    data = Digits(validation=["seen"], transforms=large, sampler=ClassBalanced(4, 16))
    assert PIXEL_LIMIT < 72 * 72
    with pytest.raises(
        ConfigError, match=r"^evaluation.references: pixels .* 5184 \(1×72×72\); remove pixels"
    ):
        fit(data, limit_train_batches=2)


def test_a_resumed_fit_keeps_the_checkpoints_reference_rows_and_recomputes_none(
    quick_args, tmp_path, monkeypatch, one_thread
):
    quiet = [
        "--trainer.limit_train_batches",
        "2",
        "--evaluation.pictures.every_n_epochs",
        "0",
        "--test_after_fit",
        "false",
    ]
    first = DMLCLI(args=["fit", *quick_args, *quiet])
    rows = evaluation_of(first).reference_metrics
    assert len(rows) == 2 * 2 * 9  # val_seen and val_test × pixels and untrained × 9 metrics

    def refuse(*args):
        raise AssertionError("a resumed fit computed reference rows")

    monkeypatch.setattr(RetrievalEvaluation, "_reference_pass", refuse)
    resumed = DMLCLI(args=["fit", *quick_args, *quiet, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 2
    assert evaluation_of(resumed).reference_metrics == rows


def evaluation_of(cli: DMLCLI) -> RetrievalEvaluation:
    """The CLI trainer's evaluation callback."""
    return next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation))


def test_the_untrained_networks_readouts_equal_brute_force_on_its_layers_pooled_by_hand(one_thread):
    data = Digits(validation=["seen"], sampler=ClassBalanced(4, 16))
    readouts = {"gap": Readout("backbone.blocks.1")}
    evaluation, initial, _ = fit(data, ["untrained"], readouts, limit_train_batches=2)
    (loader,) = data.val_dataloader()
    images = torch.cat([batch["image"] for batch in loader])
    labels = torch.cat([batch["label"] for batch in loader]).long()
    with torch.no_grad():
        blocks = initial.eval().backbone.blocks
        pooled = blocks[1](F.max_pool2d(blocks[0](images), 2)).mean(dim=(2, 3))  # (N, 16)
    (name,) = data.val_sets
    rows = expected_rows(pooled, {}, labels)
    expected = {f"{name}/untrained/gap/{key}": value for key, value in rows.items()}
    found = {key: value for key, value in evaluation.reference_metrics.items() if "/gap/" in key}
    assert found == pytest.approx(expected, abs=1e-6)
    trained = {f"{name}/gap/map@r": 0.9, f"{name}/map@r": 0.8}
    table = references_table(trained, evaluation.reference_metrics)  # the summary: untrained beside trained
    row = list(table.columns[0].cells).index("gap/map@r")
    assert list(table.columns[-1].cells)[row] == "0.9000"
    assert list(table.columns[-2].cells)[row] == f"{expected[f'{name}/untrained/gap/map@r']:.4f}"
