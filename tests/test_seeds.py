"""One run seed reaches batch plans, triplet plans, k-means and augmentation; the data split stays fixed."""

import lightning as L
import pytest
import torch

from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.callbacks import retrieval_evaluation as evaluation_module
from lightning_dml.data import ClassBalanced, ClassPairTriplets, Digits
from lightning_dml.seeds import run_seed


def seeded_data(seed: int, **options) -> dict[str, object]:
    """Under ``seed_everything(seed)``: the split, two epochs' batch plans and an augmented image."""
    L.seed_everything(seed)
    data = Digits(**{"sampler": ClassBalanced(3, 4), **options})
    data.setup()
    sampler = data.train_dataloader().batch_sampler
    plans = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        plans.append(sampler.epoch_plan().clone())
    return {
        "split": [d.indices for d in (data.train_set, data.test_set, *data.val_sets.values())],
        "plans": plans,
        "augmented": data.train_set[0]["image"],
    }


def same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize(
    "options",
    [
        {"validation": ["seen", "unseen"]},
        {"validation": ["seen"], "protocol": "closed_set", "sampler": ClassPairTriplets(triplets_per_pair=4)},
    ],
    ids=["class_balanced", "class_pair_triplets"],
)
def test_the_run_seed_changes_the_plans_and_augmentation_but_not_the_split(options):
    zero, one, zero_again = seeded_data(0, **options), seeded_data(1, **options), seeded_data(0, **options)
    assert same(zero["split"], one["split"])
    assert not same(zero["plans"], one["plans"])
    assert not torch.equal(zero["augmented"], one["augmented"])
    assert same(zero["plans"], zero_again["plans"]) and same(zero["split"], zero_again["split"])
    assert torch.equal(zero["augmented"], zero_again["augmented"])


def test_the_data_seed_alone_changes_the_split():
    L.seed_everything(0)
    first, second = Digits(validation=["seen"], seed=0), Digits(validation=["seen"], seed=1)
    first.setup()
    second.setup()
    assert not torch.equal(first.train_set.indices, second.train_set.indices)


def test_run_seed_is_lightnings_seed_else_torchs(monkeypatch):
    L.seed_everything(7)
    assert run_seed() == 7
    monkeypatch.delenv("PL_GLOBAL_SEED")
    torch.manual_seed(2**40 + 5)
    assert run_seed() == 5


def kmeans_seed(monkeypatch, evaluation: RetrievalEvaluation) -> int:
    """The seed the evaluation callback hands to k-means."""
    seeds = []
    monkeypatch.setattr(
        evaluation_module, "clustering_metrics", lambda *args, seed, **kwargs: seeds.append(seed) or {}
    )
    outputs = {"embeddings": torch.randn(6, 2), "labels": torch.arange(6) % 2, "indices": torch.arange(6)}
    evaluation.compute(outputs)
    return seeds[0]


def test_kmeans_follows_the_run_seed_unless_its_own_is_set(monkeypatch):
    L.seed_everything(0)
    assert kmeans_seed(monkeypatch, RetrievalEvaluation()) == 0
    L.seed_everything(1)
    assert kmeans_seed(monkeypatch, RetrievalEvaluation()) == 1
    assert kmeans_seed(monkeypatch, RetrievalEvaluation(seed=5)) == 5
