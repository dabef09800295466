"""Validates and tests the flattened pixels of small sets and saves the logged metrics.

Run from the repository root as ``python -m tests.callbacks.sharded_evaluation_run OUT WORLD_SIZE
SHARDED`` (SHARDED: ``on`` or ``off``); with WORLD_SIZE 2 Lightning launches a second process (CPU, gloo).
``test_sharded_evaluation.py`` compares.
"""

import sys

import lightning as L
import torch

from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.data import Digits
from tests.callbacks.test_retrieval_evaluation import Flatten, QueryGallery


def main(out: str, world_size: int, sharded: str) -> None:
    L.seed_everything(0)
    evaluation = RetrievalEvaluation(
        recall_at=[1, 4, 100],
        classification=True,
        seed=0,
        pictures=None,
        sharded={"on": True, "off": False}[sharded],
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp" if world_size > 1 else "auto",
        use_distributed_sampler=False,
        callbacks=[evaluation],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # Digits 4–9: 1,077 images, divisible neither by 2 nor by the batch of 100: the sampler pads.
    digits = Digits(train_classes=[0, 1, 2, 3], validation=["test"], eval_batch_size=100)
    logged = trainer.validate(Flatten(), datamodule=digits, verbose=False)[0]
    roles = QueryGallery(validation=[], protocol="closed_set", eval_batch_size=7)
    logged |= trainer.test(Flatten(), datamodule=roles, verbose=False)[0]
    if trainer.is_global_zero:
        torch.save(logged, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
