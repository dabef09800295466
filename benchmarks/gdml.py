"""G-DML (GEMINI teacher → guided student) against four same-backbone baselines on Fashion-MNIST, d = 2.

    python -m benchmarks.gdml [--seeds 0 1 2]

Both protocols: the paper's closed set (test images searched among the training images) and zero-shot
(teacher and student learn classes 0–4; classes 5–9 evaluated leave-one-out). Every row trains the same
narrow CIFAR-style ResNet-18 on the same training subset for the same epochs; G-DML's time includes its
teacher. Writes benchmarks/results/gdml.{md,json} and the seed-0 test scatter plots under results/gdml/.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.runner import RESULTS, Entry, run_cli, run_grid, save, test_results
from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.callbacks.plots import plot_embeddings_2d
from lightning_dml.cli import DMLCLI
from lightning_dml.data import FashionMNIST, RetrievalDataset
from lightning_dml.methods.gdml import TARGETS_FILE

CONFIGS = Path(__file__).parents[1] / "configs/gdml"
ROOT = str(Path(__file__).parents[2] / "shared/datasets")
METRICS = ["recall@1", "1nn_macro_recall", "1nn_macro_f1", "f1", "nmi", "r_precision", "map@r", "seconds"]
#: The CPU budget, the same for every row (the paper: all 6,000 training images per class, 50 epochs,
#: ResNet-18 of width 64, teacher 10 epochs with b = 64).
TRAIN_PER_CLASS, TEST_PER_CLASS, EPOCHS, WIDTH = 400, 200, 12, 8
TEACHER_EPOCHS, TRIPLETS_PER_PAIR = 5, 64
BUDGET = f"""\
**Budget (every row, CPU):** CIFAR-style ResNet-18 at width {WIDTH} (0.18 M parameters) → linear head to
d = 2; the first {TRAIN_PER_CLASS} training images of each class (closed set {10 * TRAIN_PER_CLASS:,};
zero-shot {5 * TRAIN_PER_CLASS:,} of classes 0–4); {EPOCHS} epochs, batch 32 = 4 classes × 8 images, no
augmentation. Test: the first {TEST_PER_CLASS} test images of each class (closed set:
{10 * TEST_PER_CLASS:,} queries searched among the {10 * TRAIN_PER_CLASS:,} training images; zero-shot:
{5 * TEST_PER_CLASS:,} images of classes 5–9, leave-one-out). G-DML adds its GEMINI teacher
({TEACHER_EPOCHS} epochs, b = {TRIPLETS_PER_PAIR}, raw pixels); its student uses the paper's SGD 0.1 / clip
0.1 / ReduceLROnPlateau 0.6/1. Baselines: PML losses (configs/gdml/baselines), Adam 1e-3, L2-normalised
output.

**Paper:** ResNet-18 at width 64 (11.2 M), all 60,000 training images, 50 epochs, teacher 10 epochs,
10,000 test queries, 10 runs, GPU. Paper's Fashion-MNIST numbers (closed set): G-DML R@1 91.93 /
MAP@R 87.93; best baseline (Multi-Similarity) 90.33 / 77.27.

Metrics: `1nn_macro_recall` and `1nn_macro_f1` (the 1-NN classifier's macro recall and F1: the paper's
Recall@1 and F-score), `recall@1` (the DML hit rate; ties count as their expected value over random
orders, so with equally many queries per class it equals the 1-NN recall), `f1` (k-means pairwise
F1), `nmi` (k-means on the 2-D outputs as they are; in the closed set on the test queries only, as the
authors' evaluation does), `r_precision`, `map@r` (R = reference images of the query's class). `seconds`:
wall time of one run (G-DML: teacher + student), on cores shared with other jobs, so only a rough guide."""
BASELINES = ["contrastive", "triplet", "margin", "multi_similarity"]
PROTOCOLS = {"closed set": "closed_set_train_reference", "zero-shot": "zero_shot"}


class FashionMNISTSubset(FashionMNIST):
    """Fashion-MNIST with the first ``train_per_class`` / ``test_per_class`` images of each class."""

    def __init__(self, train_per_class: int = 300, test_per_class: int = 200, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_per_class = train_per_class
        self.test_per_class = test_per_class

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """The protocol's split, cut to the first images of each class (the files are shuffled)."""
        train, test = super().build()
        return first_per_class(train, self.train_per_class), first_per_class(test, self.test_per_class)


def first_per_class(dataset: RetrievalDataset, count: int) -> RetrievalDataset:
    """The view of the first ``count`` items of each class of ``dataset``."""
    keep = [(dataset.labels == c).nonzero().flatten()[:count] for c in dataset.labels.unique()]
    return dataset.select(torch.cat(keep).sort().values)


def common_args(protocol: str) -> list[str]:
    """The data, budget and evaluation shared by every row of one protocol."""
    return [
        "--data.class_path",
        f"{__name__}.FashionMNISTSubset",
        "--data.init_args.root",
        ROOT,
        "--data.init_args.protocol",
        protocol,
        "--data.init_args.train_per_class",
        str(TRAIN_PER_CLASS),
        "--data.init_args.test_per_class",
        str(TEST_PER_CLASS),
        "--data.init_args.validation",
        "[]",
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.enable_model_summary",
        "false",
        "--data.init_args.classes_per_batch",
        "4",
        "--data.init_args.samples_per_class",
        "8",
        "--evaluation.classification",
        "true",
        "--evaluation.metric",
        "euclidean",
    ]


def backbone_args() -> list[str]:
    """The student backbone of every row: the CIFAR-style ResNet-18 at width ``WIDTH``."""
    return ["--model.init_args.backbone.init_args.width", str(WIDTH)]


def test_metrics(cli: DMLCLI, plot_name: str, seed: int) -> dict[str, float]:
    """The run's ``test/*`` metrics; for seed 0 also save the scatter plot of the test queries."""
    result = test_results(cli)
    if seed == 0:
        evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation))
        outputs = evaluation.last_outputs["test"]
        queries = outputs.get("is_query", torch.ones_like(outputs["labels"])).bool()
        figure = plot_embeddings_2d(outputs["embeddings"][queries], outputs["labels"][queries], plot_name)
        (RESULTS / "gdml").mkdir(parents=True, exist_ok=True)
        figure.savefig(RESULTS / "gdml" / f"{plot_name.replace(' ', '_').replace(',', '')}.png", dpi=80)
    return result


def gdml_entry(protocol_name: str) -> Entry:
    """Teacher then student, both on the protocol's training subset."""
    protocol = PROTOCOLS[protocol_name]
    streams = "10" if protocol != "zero_shot" else "5"

    def run(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as runs:
            teacher = run_cli(
                "fit",
                [
                    "--config",
                    str(CONFIGS / "fashion_mnist_teacher.yaml"),
                    *common_args(protocol),
                    "--data.init_args.samples_per_class",
                    str(TRIPLETS_PER_PAIR),
                    "--model.init_args.num_streams",
                    streams,
                    "--trainer.max_epochs",
                    str(TEACHER_EPOCHS),
                ],
                seed,
                runs,
            )
            accuracy = float(teacher.trainer.callback_metrics["targets/1nn_accuracy"])
            student = run_cli(
                "fit",
                [
                    "--config",
                    str(CONFIGS / "fashion_mnist_student.yaml"),
                    *common_args(protocol),
                    *backbone_args(),
                    "--trainer.callbacks",
                    "[]",
                    "--model.init_args.teacher",
                    str(Path(teacher.trainer.log_dir) / TARGETS_FILE),
                ],
                seed,
                runs,
            )
            return test_metrics(student, f"G-DML, {protocol_name}", seed) | {"target_1nn_accuracy": accuracy}

    return Entry(f"G-DML ({protocol_name})", run)


def baseline_entry(loss: str, protocol_name: str) -> Entry:
    """MetricLearning with one of the paper's baseline losses, same backbone, data and epochs."""
    protocol = PROTOCOLS[protocol_name]

    def run(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as runs:
            args = [
                "--config",
                str(CONFIGS / "baselines/fashion_mnist.yaml"),
                "--config",
                str(CONFIGS / f"baselines/{loss}.yaml"),
                *common_args(protocol),
                *backbone_args(),
            ]
            return test_metrics(run_cli("fit", args, seed, runs), f"{loss}, {protocol_name}", seed)

    return Entry(f"{loss} ({protocol_name})", run)


def header(seeds: list[int]) -> str:
    """The results file's title, command, machine and budget."""
    return (
        "# G-DML vs same-backbone baselines, Fashion-MNIST, d = 2\n\n"
        f"`python -m benchmarks.gdml --seeds {' '.join(map(str, seeds))}` on "
        f"{platform.processor() or 'CPU'} (1 thread, 2 cores shared with another benchmark); mean ± 95% CI "
        f"over {len(seeds)} seeds (network init, batch plans, GEMINI triplet plan, k-means; fixed "
        f"split).\n\n{BUDGET}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    arguments = parser.parse_args()
    torch.set_num_threads(1)  # another benchmark shares the two cores
    entries = [
        entry
        for protocol in arguments.protocols
        for entry in [gdml_entry(protocol), *(baseline_entry(loss, protocol) for loss in BASELINES)]
    ]
    results, text = {}, ""
    for entry in entries:  # saved after each row, so a cut-short run still leaves its table
        results |= run_grid([entry], arguments.seeds)
        text = save("gdml", header(arguments.seeds), results, METRICS)
    print(text)


if __name__ == "__main__":
    main()
