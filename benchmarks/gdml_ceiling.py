"""What the G-DML table's student backbone can reach at its budget, trained by the strongest plain signal.

    python -m benchmarks.gdml_ceiling [--epochs 3] [--seed 0] [--head 2d]

``benchmarks.gdml`` regresses a SmallCNN onto the GEMINI teacher's 2-D targets. This hand-written loop
trains the same backbone with the same recipe (SGD 0.1, weight decay 1e-4, clipping by value 0.1, plain
shuffled batches of 32, no augmentation, one thread) on the labels themselves, by cross-entropy:

- ``--head linear``: backbone → 10-way linear classifier; its test accuracy bounds what a student of this
  backbone classifies correctly after as many epochs;
- ``--head 2d``: backbone → 2-D embedding → 10-way linear classifier; after each epoch the 2-D test
  embeddings are searched among the 2-D training embeddings, as the table's rows are (``1nn_macro_recall``,
  ``map@r``: the paper's Recall@1 and MAP@R).

Prints one line per epoch and writes ``benchmarks/results/gdml_ceiling_<head>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets

from benchmarks.runner import DATASETS, RESULTS
from lightning_dml.data import FashionMNIST
from lightning_dml.metrics import nearest_neighbour_classification, retrieval_metrics
from lightning_dml.models import SmallCNN


def load(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` of Fashion-MNIST's training or test split, normalised as the data module
    does, and their labels."""
    split = datasets.FashionMNIST(DATASETS, train=train)
    (mean,), (std,) = FashionMNIST.default_preprocessing.mean, FashionMNIST.default_preprocessing.std
    return ((split.data.float() / 255 - mean) / std)[:, None], split.targets


@torch.no_grad()
def embed(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Outputs of ``network`` in evaluation mode, in batches of 1,000."""
    network.eval()
    return torch.cat([network(images[start : start + 1000]) for start in range(0, len(images), 1000)])


def main() -> None:
    """Train, evaluate after every epoch, print and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", choices=["linear", "2d"], default="2d")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(arguments.seed)
    (train_images, train_labels), (test_images, test_labels) = load(True), load(False)
    backbone = SmallCNN()
    embedding = nn.Linear(backbone.out_features, 2) if arguments.head == "2d" else nn.Identity()
    classifier = nn.Linear(2 if arguments.head == "2d" else backbone.out_features, 10)
    features = nn.Sequential(backbone, embedding)
    network = nn.Sequential(features, classifier)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, weight_decay=1e-4)
    rows, seconds = [], 0.0
    for epoch in range(arguments.epochs):
        start = time.perf_counter()
        network.train()
        for batch in torch.randperm(len(train_labels)).split(32):
            loss = F.cross_entropy(network(train_images[batch]), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_value_(network.parameters(), 0.1)
            optimizer.step()
        seconds += time.perf_counter() - start
        row = {"epoch": epoch + 1, "training_seconds": round(seconds)}
        row["accuracy"] = float((embed(network, test_images).argmax(1) == test_labels).double().mean())
        if arguments.head == "2d":
            queries, gallery = embed(features, test_images), embed(features, train_images)
            row |= nearest_neighbour_classification(
                queries, test_labels, gallery, train_labels, metric="euclidean"
            )
            row |= retrieval_metrics(
                queries, test_labels, gallery, train_labels, metric="euclidean", recall_at=(1,)
            )
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {"arguments": vars(arguments), "epochs": rows}
    out = RESULTS / f"gdml_ceiling_{arguments.head}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(render(report))


def render(report: dict) -> str:
    """A markdown table of a run's per-epoch results."""
    arguments, rows = report["arguments"], report["epochs"]
    columns = [name for name in rows[0] if name not in ("1nn_macro_f1", "precision@1")]
    head = (
        "a 10-way linear classifier"
        if arguments["head"] == "linear"
        else "a 2-D embedding → 10-way classifier"
    )
    retrieval = (
        " The other columns search the test images' 2-D embeddings among the 60,000 training images'"
        " (Euclidean), as `benchmarks.gdml` evaluates its rows."
        if arguments["head"] == "2d"
        else ""
    )
    lines = [
        f"# SmallCNN + {head}, cross-entropy, the G-DML student's recipe (seed {arguments['seed']})",
        "",
        f"`python -m benchmarks.gdml_ceiling --head {arguments['head']} --epochs {arguments['epochs']}` "
        "(one thread; SGD 0.1, weight decay 1e-4, clipping by value 0.1, shuffled batches of 32, no "
        "augmentation). `accuracy`: the classifier's on the 10,000 test images." + retrieval,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += [
        "| "
        + " | ".join(
            f"{row[name]:.4f}" if isinstance(row[name], float) else str(row[name]) for name in columns
        )
        + " |"
        for row in rows
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
