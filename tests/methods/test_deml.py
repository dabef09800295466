"""DeML LightningModule: embedding order, loss composition, parameter groups, and a fit through the CLI."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dml.cli import DMLCLI
from lightning_dml.losses.deml import activation_penalty, hinge_adversary_loss, unit_row_norm_penalty
from lightning_dml.methods import DeML
from lightning_dml.models import SplitSmallCNN
from tests.conftest import DEML_DIGITS, REPO, quick_cli_args
from tests.reference import assert_logged, reference_metrics


def small_deml(**kwargs) -> DeML:
    torch.manual_seed(0)
    options = {"streams": 2, "learners": 3, "embedding_size": 8} | kwargs
    return DeML(SplitSmallCNN(widths=(8, 16, 16)), **options)


def batch(size: int = 8) -> dict[str, torch.Tensor]:
    return {"image": torch.randn(size, 1, 28, 28), "label": torch.arange(size) % 4}


def test_embedding_is_the_concatenation_of_unit_learner_embeddings() -> None:
    model = small_deml().eval()
    images = torch.randn(5, 1, 28, 28)
    embeddings = model.embed(images)
    assert embeddings.shape == (5, 2 * 3 * 8)
    blocks = embeddings.view(5, 6, 8)
    torch.testing.assert_close(blocks.norm(dim=-1), torch.ones(5, 6))
    normalized = model.network(images).normalized()
    torch.testing.assert_close(blocks[:, 4], normalized[1, 1])  # stream 2, learner 2
    # Cosine of the concatenations = mean of the learners' cosines.
    cosine = F.cosine_similarity(embeddings[0], embeddings[1], dim=0)
    torch.testing.assert_close(cosine, (blocks[0] * blocks[1]).sum(dim=-1).mean())


def test_training_loss_sums_the_terms_as_specified() -> None:
    model = small_deml().eval()  # eval: the same BatchNorm statistics in both passes
    data = batch()
    loss = model.training_loss(data)
    output = model.network(data["image"])
    normalized = output.normalized()
    metric = sum(torch.stack([model.loss(e, data["label"]) for e in stream]).mean() for stream in normalized)
    adversary = 0.2 * sum(hinge_adversary_loss(stream) for stream in normalized)
    streams = model.network.streams
    activation = 0.014 * sum(
        activation_penalty(s.embeddings[0].weight, p[0]) for s, p in zip(streams, output.pooled, strict=True)
    )
    row_norm = 0.5 * sum(unit_row_norm_penalty(s.embeddings[0].weight) for s in streams)
    torch.testing.assert_close(loss, metric + adversary + activation + row_norm)
    plain = small_deml(adversary="none", auxiliary=False).eval()
    torch.testing.assert_close(plain.training_loss(data), metric)


def test_grl_variant_trains_its_adversary_with_the_new_layers() -> None:
    model = small_deml(adversary="grl", backbone_lr=1e-5)
    groups = model.parameter_groups()
    pretrained = {id(p) for g in groups if g.get("lr") == 1e-5 for p in g["params"]}
    new = {id(p) for g in groups if "lr" not in g for p in g["params"]}
    assert all(id(p) in new for p in model.adversary.parameters())
    assert all(id(p) in new for s in model.network.streams for p in s.attentions.parameters())
    assert all(id(p) in pretrained for s in model.network.streams for p in s.trunk.parameters())
    assert len(new) + len(pretrained) == len(list(model.parameters()))
    loss = model.training_loss(batch())
    loss.backward()
    assert all(p.grad is not None for p in model.adversary.parameters())


def test_biases_train_at_twice_their_layers_rate_without_weight_decay() -> None:
    # The release: every bias has lr_mult 2, decay_mult 0 (its weights 1 and 1; new layers 10× the base).
    model = small_deml(
        backbone_lr=1e-5, optimizer=lambda params: torch.optim.Adam(params, lr=1e-4, weight_decay=2e-4)
    )
    optimizer = model.configure_optimizers()
    names = {id(p): name for name, p in model.named_parameters()}
    seen = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            rate = 1e-5 if ".trunk." in name or ".upper." in name else 1e-4
            expected = (2 * rate, 0.0) if name.endswith(".bias") else (rate, 2e-4)
            assert (group["lr"], group["weight_decay"]) == pytest.approx(expected), name
            seen.append(name)
    assert sorted(seen) == sorted(names.values())
    assert any(".attentions." in n and n.endswith(".bias") for n in seen)  # the CAM biases: 2 × 1e-4
    assert any(".trunk." in n and n.endswith(".bias") for n in seen)  # BatchNorm shifts: 2 × 1e-5


def test_u512_switches_leave_a_single_plain_learner() -> None:
    model = small_deml(
        streams=1,
        learners=1,
        embedding_size=48,
        object_attention=False,
        channel_attention=False,
        adversary="none",
        auxiliary=False,
    )
    assert model.embed(torch.randn(3, 1, 28, 28)).shape == (3, 48)
    assert len(model.network.streams) == 1 and not list(model.network.streams[0].attentions)


@pytest.fixture
def deml_digits_args(tmp_path: Path) -> list[str]:
    """:func:`quick_cli_args` for the DeML digits config, 3 batches, logging every step."""
    return [
        *quick_cli_args(tmp_path / "runs", *DEML_DIGITS),
        "--trainer.limit_train_batches",
        "3",
        "--trainer.log_every_n_steps",
        "1",
    ]


def test_deml_fit_on_digits_through_the_cli(deml_digits_args: list[str], tmp_path: Path) -> None:
    cli = DMLCLI(args=["fit", *deml_digits_args])
    # the test metrics of the tested checkpoint (loaded into cli.model) equal the brute-force reference's
    expected = reference_metrics(cli.model, cli.datamodule.test_dataloader())
    assert_logged(cli.trainer.callback_metrics, "test", expected)
    assert cli.model.hparams.streams == 2 and cli.model.embed(torch.zeros(1, 1, 8, 8)).shape == (1, 192)
    events = EventAccumulator(str(next((tmp_path / "runs").rglob("events.out.tfevents*")).parent)).Reload()
    for term in ("metric_loss", "adversary", "activation_penalty", "row_norm_penalty"):
        values = [event.value for event in events.Scalars(f"train/{term}")]
        assert values and all(torch.isfinite(torch.tensor(values)))
    assert "attention_maps" in events.Tags()["images"]  # the config's AttentionMaps callback


def offline_cub_cli(tmp_path: Path, *overlays: str) -> DMLCLI:
    """configs/deml/release.yaml on configs/data/cub.yaml with ``overlays``, built without running, on the
    CPU and without downloads."""
    offline = tmp_path / "offline.yaml"
    offline.write_text(
        "model:\n  init_args:\n    backbone:\n      init_args:\n        weights: null\n"
        "trainer:\n  accelerator: cpu\n  devices: 1\n  strategy: auto\n"
    )
    configs = [
        str(REPO / "configs/data/cub.yaml"),
        str(REPO / "configs/deml/release.yaml"),
        *(str(REPO / o) for o in overlays),
        str(offline),
    ]
    args = [arg for config in configs for arg in ("--config", config)]
    return DMLCLI(args=[*args, "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)


def test_cub_config_is_the_release_recipe(tmp_path: Path) -> None:
    cli = offline_cub_cli(tmp_path)
    model, data = cli.model, cli.datamodule
    assert (len(model.network.streams), model.network.learners, model.network.embedding_size) == (3, 3, 56)
    assert model.adversary.kind == "hinge" and model.auxiliary and model.loss.negative_cost == 35.0
    trunk = model.network.streams[0].trunk
    assert model.network.streams[0].attentions[0].layers[0].in_channels == 512 and len(trunk) == 11
    optimizer = model.configure_optimizers()
    # pretrained weights, their biases, new weights, new biases
    groups = optimizer["optimizer"].param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == pytest.approx(
        [(1e-5, 2e-4), (2e-5, 0.0), (1e-4, 2e-4), (2e-4, 0.0)]
    )
    assert optimizer["lr_scheduler"]["scheduler"].milestones == {15000: 1}
    assert (data.sampler.classes_per_batch, data.sampler.samples_per_class) == (13, 2)
    assert data.preprocessing.image_size == 227
    assert data.transform(train=True)(torch.zeros(3, 300, 400, dtype=torch.uint8)).shape == (3, 227, 227)
    assert data.validation == ["unseen"]  # model selection on held-out training classes, not the test set


def test_u512_cub_overlay_is_the_release_u512_recipe(tmp_path: Path) -> None:
    # examples/CUB/U512: batch_size 130 (65 classes × 2), max_iter 5000 on one GPU, num_output 512, cost_n 25.
    cli = offline_cub_cli(tmp_path, "configs/deml/u512_cub.yaml")
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    network = model.network
    assert (len(network.streams), network.learners, network.embedding_size) == (1, 1, 512)
    assert not network.object_attention and not network.streams[0].attentions
    assert model.adversary.kind == "none" and not model.auxiliary
    assert (model.loss.alpha, model.loss.beta, model.loss.negative_cost) == (2.0, 0.5, 25.0)
    assert (data.sampler.classes_per_batch, data.sampler.samples_per_class) == (65, 2)
    assert trainer.max_steps == 5000 and trainer.num_devices == 1
    optimizer = model.configure_optimizers()
    groups = optimizer["optimizer"].param_groups  # base_lr 1e-5; embedding lr_mult 10; biases 2, no decay
    assert [(g["lr"], g["weight_decay"]) for g in groups] == pytest.approx(
        [(1e-5, 2e-4), (2e-5, 0.0), (1e-4, 2e-4)]
    )
    with torch.no_grad():
        assert model.eval().embed(torch.zeros(2, 3, 227, 227)).shape == (2, 512)
