"""G-DML (GEMINI teacher → guided student) against the paper's baselines on the full Fashion-MNIST, d = 2.

    python -m benchmarks.gdml [--seeds 0 1 2] [--epochs 3] [--jobs 2]

The paper's closed-set protocol: all 60,000 training images train every row and are the reference set of
all 10,000 test queries. Every row trains the same student backbone for the same epochs, exactly as the
paper trains its student (SGD 0.1, weight decay 1e-4, clipping by value 0.1, plain shuffled batches of 32,
raw 2-D outputs, configs/gdml/baselines/); G-DML's time includes its teacher. ``--jobs 2`` runs two rows
at once, one thread each. Writes benchmarks/results/gdml.{md,json} and the seed-0 scatter plots of the test
queries under results/gdml/.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.runner import DATASETS, RESULTS, confidence_interval, run_cli, save, stack, test_results
from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.callbacks.plots import plot_embeddings_2d
from lightning_dml.cli import DMLCLI
from lightning_dml.methods.gdml import TARGET_ACCURACY, TARGETS_FILE

#: The dataset config and its overlay of the paper's student and baseline values.
FASHION_MNIST = ("data/fashion_mnist.yaml", "gdml/fashion_mnist.yaml")
METRICS = ["1nn_macro_recall", "1nn_macro_f1", "recall@1", "map@r", "r_precision", "nmi", "f1", "seconds"]
#: The paper's Table 2 (Fashion-MNIST, d = 2, closed set, mean of 10 runs): Recall@1, MAP@R, in percent.
PAPER = {
    "G-DML": (91.93, 87.93),
    "multi_similarity": (90.33, 77.27),
    "margin": (87.75, 79.91),
    "contrastive": (83.96, 75.35),
    "triplet": (83.86, 72.07),
}
BASELINES = ["contrastive", "triplet", "margin", "multi_similarity", "triplet_network"]
#: The student backbone of every row on this CPU (the paper: CIFAR-style ResNet-18 at width 64, 11.2 M).
BACKBONE = ["--model.init_args.backbone.class_path", "lightning_dml.models.SmallCNN"]
#: Triplet-Network triplets per ordered class pair here: 90 pairs x 3 x 200 = 54,000 images per epoch, about
#: the 60,000 of the other rows (the authors: 512, in batches of 512 triplets).
TRIPLETS_PER_PAIR = 200
BACKBONE_NAME = "SmallCNN 32/64/128 (conv3×3-BN-ReLU-maxpool ×3, global average pool; 93 k parameters)"


def common_args(epochs: int) -> list[str]:
    """The data, epochs and evaluation shared by every row: full Fashion-MNIST, test at the last epoch."""
    return [
        "--data.init_args.root",
        DATASETS,
        "--data.init_args.validation",
        "[]",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_model_summary",
        "false",
        "--trainer.callbacks",
        "[]",
        *BACKBONE,
    ]


def test_metrics(cli: DMLCLI, name: str, seed: int) -> dict[str, float]:
    """The run's ``test/*`` metrics; for seed 0 also save the scatter plot of the test queries."""
    result = test_results(cli)
    if seed == 0:
        evaluation = next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation))
        outputs = evaluation.last_outputs["test"]
        queries = outputs["is_query"].bool()
        figure = plot_embeddings_2d(outputs["embeddings"][queries], outputs["labels"][queries], name)
        (RESULTS / "gdml").mkdir(parents=True, exist_ok=True)
        figure.savefig(RESULTS / "gdml" / f"{name}.png", dpi=80)
    return result


def run_gdml(seed: int, epochs: int, teacher_epochs: int) -> dict[str, float]:
    """Teacher (the paper's recipe, ``teacher_epochs``), then the student on its targets."""
    with tempfile.TemporaryDirectory() as runs:
        teacher_args = [
            *stack("data/fashion_mnist.yaml", "gdml/teacher.yaml", "gdml/fashion_mnist_teacher.yaml")
        ]
        teacher_args += ["--data.init_args.root", DATASETS]
        teacher_args += [
            "--trainer.max_epochs",
            str(teacher_epochs),
            "--trainer.enable_model_summary",
            "false",
            "--test_after_fit",  # its label-conditioned test is an oracle, no row of this comparison
            "false",
        ]
        teacher = run_cli("fit", teacher_args, seed, runs)
        accuracy = float(teacher.trainer.callback_metrics[TARGET_ACCURACY])
        targets = str(Path(teacher.trainer.log_dir) / TARGETS_FILE)
        student_args = [
            *stack(*FASHION_MNIST[:1], "gdml/student.yaml", *FASHION_MNIST[1:]),
            *common_args(epochs),
        ]
        student = run_cli("fit", [*student_args, "--model.init_args.teacher", targets], seed, runs)
        return test_metrics(student, "G-DML", seed) | {"target_1nn_accuracy": accuracy}


def run_baseline(loss: str, seed: int, epochs: int) -> dict[str, float]:
    """One paper-protocol baseline (configs/gdml/baselines) on the student's backbone, data and epochs."""
    with tempfile.TemporaryDirectory() as runs:
        loss_configs = (
            ["gdml/baselines/triplet_network.yaml"]
            if loss == "triplet_network"
            else [f"losses/{loss}.yaml", "gdml/baselines/without_miner.yaml"]
        )
        args = stack(*FASHION_MNIST[:1], "gdml/baselines/base.yaml", *FASHION_MNIST[1:], *loss_configs)
        args += common_args(epochs)
        if loss == "triplet_network":  # not the authors' 512 per class pair: 2.3 × an epoch's images
            args += ["--data.init_args.sampler.init_args.triplets_per_pair", str(TRIPLETS_PER_PAIR)]
        return test_metrics(run_cli("fit", args, seed, runs), loss, seed)


def run_row(name: str, seed: int, epochs: int, teacher_epochs: int) -> dict[str, float]:
    """One (row, seed) run on one thread, timed."""
    import time

    torch.set_num_threads(1)
    start = time.perf_counter()
    metrics = run_gdml(seed, epochs, teacher_epochs) if name == "G-DML" else run_baseline(name, seed, epochs)
    return metrics | {"seconds": time.perf_counter() - start}


def comparison(results: dict[str, list[dict[str, float]]]) -> str:
    """Recall@1 and MAP@R (percent, mean ± 95% CI) next to the paper's Table 2."""
    lines = ["| entry | Recall@1 | paper | MAP@R | paper |", "|---|---|---|---|---|"]
    for name, runs in results.items():
        cells = []
        for metric, paper in zip(["1nn_macro_recall", "map@r"], PAPER.get(name, (None, None)), strict=True):
            mean, half = confidence_interval([100 * run[metric] for run in runs])
            cells += [f"{mean:.2f} ± {half:.2f}", "–" if paper is None else f"{paper:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(arguments: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> str:
    """The results file's title, command, machine, recipe and the comparison with the paper."""
    seeds = " ".join(map(str, arguments.seeds))
    return f"""# G-DML vs the paper's baselines, full Fashion-MNIST, closed set, d = 2

`python -m benchmarks.gdml --seeds {seeds} --epochs {arguments.epochs} --teacher-epochs \
{arguments.teacher_epochs} --jobs {arguments.jobs}` on {platform.processor() or "CPU"} ({arguments.jobs} \
run(s) at once, 1 thread each); mean ± 95% CI (Student t) over {len(arguments.seeds)} seeds. A seed varies the
network initialisation, the batch order, the GEMINI and Triplet-Network triplet plans and the k-means
initialisation; the data split is the dataset's own.

**Protocol (the paper's):** all 60,000 training images train every row and are the reference set searched by
all 10,000 test images (`protocol: closed_set`, `test_gallery: training_images`).
Student and baselines: {BACKBONE_NAME} → linear head to
d = 2, raw outputs, Euclidean search; {arguments.epochs} epochs of plain shuffled batches of 32; SGD lr 0.1,
weight decay 1e-4, gradient clipping by value 0.1, ReduceLROnPlateau on the epoch's mean loss (student and
PML baselines 0.6/1, Triplet-Network 0.2/3). No augmentation. G-DML's GEMINI teacher: the paper's recipe
(configs/gdml/teacher.yaml and fashion_mnist_teacher.yaml: one stream per class, b = 64 triplets per class
pair, SGD 1e-3, raw pixels) for {arguments.teacher_epochs} epochs. Baselines (configs/gdml/baselines/): PML's
contrastive, triplet, margin and multi-similarity losses (configs/losses/) without a miner;
`triplet_network` is the authors' own baseline ({TRIPLETS_PER_PAIR} fixed triplets per class pair, so that an
epoch sees about as many images as the others', dealt into shuffled batches of {TRIPLETS_PER_PAIR} triplets;
torch's triplet loss with margin 3; the authors use 512 and 512).
The paper trains a CIFAR-style ResNet-18 (width 64) for 50 epochs on a GPU, 10 runs.

Metrics: `1nn_macro_recall` / `1nn_macro_f1` (the 1-NN classifier's macro recall and F1: the paper's Recall@1
and F-score), `recall@1` (the DML hit rate; ties count as their expected value over random orders),
`map@r` and `r_precision` (R = the 6,000 training images of the query's class), `nmi` and `f1` (k-means on
the test queries' 2-D outputs, as the authors' evaluation clusters them). `seconds`: wall time of one run
(G-DML: teacher + student).

{comparison(results)}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--rows", nargs="+", default=["G-DML", *BASELINES], choices=["G-DML", *BASELINES])
    parser.add_argument("--jobs", type=int, default=2)
    arguments = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    tasks = [(name, seed) for name in arguments.rows for seed in arguments.seeds]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arguments.rows}
    with ProcessPoolExecutor(arguments.jobs, max_tasks_per_child=1) as pool:
        futures = {
            task: pool.submit(run_row, *task, arguments.epochs, arguments.teacher_epochs) for task in tasks
        }
        for (name, seed), future in futures.items():  # saved after each run: a cut-short run leaves its table
            metrics = future.result()
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
            results[name].append(metrics)
            done = {key: runs for key, runs in results.items() if runs}
            text = save("gdml", header(arguments, done), done, METRICS)
    print(text)


if __name__ == "__main__":
    main()
