"""Predicts a small tensor set with ``EmbeddingWriter(OUT, shards=SHARDS)``.

Run from the repository root as ``python -m tests.callbacks.sharded_prediction_run OUT WORLD_SIZE SHARDS``
(SHARDS: ``0`` or ``1``); with WORLD_SIZE 2 Lightning launches a second process (CPU, gloo).
``test_embedding_writer.py`` reads what it wrote.
"""

import sys

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from lightning_dml.callbacks import EmbeddingWriter
from tests.callbacks.test_embedding_writer import Flatten, tensor_dataset


def main(out: str, world_size: int, shards: bool) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp" if world_size > 1 else "auto",
        use_distributed_sampler=False,
        callbacks=[EmbeddingWriter(out, shards=shards)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    dataset = tensor_dataset(11)  # 11 images: the sampler pads the second rank with a repeat
    sampler = DistributedSampler(dataset, world_size, trainer.global_rank, shuffle=False)
    trainer.predict(Flatten(), DataLoader(dataset, batch_size=4, sampler=sampler), return_predictions=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
