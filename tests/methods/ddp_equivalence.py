"""Trains MetricLearning for a few SGD steps on fixed data and saves the final weights.

Run from the repository root as ``python -m tests.methods.ddp_equivalence OUT WORLD_SIZE BATCH_SIZE
STEPS``; with WORLD_SIZE 2 Lightning launches a second process (CPU, gloo). ``tests/methods/test_ddp.py``
compares 2 processes × B with 1 process × 2B.
"""

import os
import sys

import lightning as L
import torch
from pytorch_metric_learning.miners import MultiSimilarityMiner
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lightning_dml.data import RetrievalDataset, TensorImages
from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.methods import MetricLearning


class Linear(nn.Module):
    """A backbone without batch statistics, so per-rank batches see the same function."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(16, 32)
        self.out_features = 32

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(images.flatten(1)))


def main(out: str, world_size: int, batch_size: int, steps: int) -> None:
    L.seed_everything(0)
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(64) % 8
    dataset = RetrievalDataset(TensorImages(images, labels), transform=lambda x: x.float() / 255)
    # Double precision, so that summing the same terms in another order (gathered embeddings, the
    # gradient all-reduce) leaves differences far below the tolerance. Unshuffled: rank r takes the
    # items r, r+W, ..., so the W local batches of a step hold exactly the single W·B batch's items.
    rank = int(os.environ.get("LOCAL_RANK", 0))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    model = MetricLearning(
        Linear(),
        BinomialDevianceLoss(),
        MultiSimilarityMiner(epsilon=0.5),
        embedding_size=8,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world_size,
        precision="64-true",
        strategy="ddp" if world_size > 1 else "auto",
        max_steps=steps,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:5]))
