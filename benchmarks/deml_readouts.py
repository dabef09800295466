"""Where DeML keeps the zero-shot information: its concatenated embedding, each learner, and its trunk.

    python -m benchmarks.deml_readouts [--seeds 0 1 2] [--steps 500]

Writes benchmarks/results/deml_readouts.{md,json}. Fashion-MNIST, classes 0–4 train → the 5,000 test-file
images of classes 5–9, leave-one-out, as benchmarks/readouts.py for the quickstart-style CNN. The network
is configs/deml/small_cnn.yaml with its Fashion-MNIST values (2 streams × 3 learners × 32-d on a
SplitSmallCNN), untrained (``lightning-dml test``) and trained for ``--steps`` batches as in
benchmarks/deml.py (no validation, last weights tested). Each is scored on: the test embedding (the 6
normalised learner embeddings concatenated, 192-d), each learner's own 32-d embedding (stream s, learner l),
and readouts of the first stream's trunk (the map every learner's attention modulates, 64 × 7 × 7) globally
averaged (64-d) and as a 7×7 grid (3,136-d). Raw pixels as in benchmarks/readouts.py.
"""

from __future__ import annotations

import argparse
import platform
import re
import tempfile

import torch

from benchmarks.deml import budget_args
from benchmarks.readouts import pixel_metrics
from benchmarks.runner import Entry, paired_difference, run_cli, run_grid, save, stack, test_results
from lightning_dml.cli import DMLCLI
from lightning_dml.metrics import retrieval_metrics

METRICS = ["recall@1", "map@r"]
TRUNK = "network.streams.0.trunk.1.3"  # the trunk's last node: block 2's max-pool, 64 × 7 × 7
READOUTS = f"{{trunk_gap: {{layer: {TRUNK}}}, trunk_grid7: {{layer: {TRUNK}, pooling: grid, size: 7}}}}"
LEARNER = re.compile(r"s\d+l\d+/")  # a learner's metric: s{stream}l{learner}/{metric}
#: Table label of each test-set representation and the prefix of its metrics.
REPRESENTATIONS = {
    "concatenated embedding (192-d)": "",
    "trunk GAP (64-d)": "trunk_gap/",
    "trunk 7×7 grid (3,136-d)": "trunk_grid7/",
}


def learner_metrics(cli: DMLCLI) -> dict[str, float]:
    """Recall@1 and MAP@R of each learner's own embedding (its block of the test embedding) on the test set,
    as ``s{stream}l{learner}/{metric}``."""
    model, hparams = cli.model.eval(), cli.model.hparams
    with torch.no_grad():
        batches = [
            (model.embed(batch["image"]), batch["label"]) for batch in cli.datamodule.test_dataloader()
        ]
    embeddings = torch.cat([embedded for embedded, _ in batches])
    labels = torch.cat([label for _, label in batches])
    blocks = embeddings.view(len(labels), hparams.streams, hparams.learners, hparams.embedding_size)
    metrics = {}
    for stream in range(hparams.streams):
        for learner in range(hparams.learners):
            scores = retrieval_metrics(blocks[:, stream, learner], labels, recall_at=(1,))
            metrics |= {f"s{stream}l{learner}/{name}": scores[name] for name in METRICS}
    return metrics


def deml_entry(name: str, subcommand: str, *args: str) -> Entry:
    """An entry that runs ``lightning-dml SUBCOMMAND ARGS`` and returns its test metrics and its learners'."""

    def run(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as runs:
            cli = run_cli(subcommand, list(args), seed, runs)
            return test_results(cli) | learner_metrics(cli)

    return Entry(name, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    options = parser.parse_args()
    torch.set_num_threads(1)  # other jobs share the 2 cores
    base = [
        *stack("data/fashion_mnist.yaml", "deml/small_cnn.yaml", "deml/fashion_mnist.yaml"),
        *budget_args(options.steps),
        "--evaluation.clustering",
        "false",
        "--evaluation.readouts",
        READOUTS,
    ]
    networks = {
        "untrained DeML": deml_entry("untrained", "test", *base),
        "trained DeML": deml_entry("trained", "fit", *base),
    }
    runs = run_grid([Entry("raw pixels", lambda seed: pixel_metrics()), *networks.values()], options.seeds)
    results = {"raw pixels (no seed dependence)": runs["raw pixels"]}
    for network, entry in networks.items():
        learners = sorted({key.split("/")[0] for key in runs[entry.name][0] if LEARNER.match(key)})
        labels = {**REPRESENTATIONS, **{f"learner {key} (32-d)": f"{key}/" for key in learners}}
        for label, prefix in labels.items():
            results[f"{network}: {label}"] = [
                {m: run[prefix + m] for m in METRICS} for run in runs[entry.name]
            ]
    results["trained: trunk grid − concatenated embedding, same seed"] = paired_difference(
        results,
        "trained DeML: trunk 7×7 grid (3,136-d)",
        "trained DeML: concatenated embedding (192-d)",
        METRICS,
    )
    seeds = " ".join(map(str, options.seeds))
    header = (
        "# DeML readouts: Fashion-MNIST 0–4 → unseen 5–9 (5,000 test images), leave-one-out\n\n"
        f"`python -m benchmarks.deml_readouts --seeds {seeds} --steps {options.steps}` on "
        f"{platform.processor() or 'CPU'}, 1 thread (2 cores shared with other jobs). DeML 2 streams × 3 "
        "learners × 32-d on SplitSmallCNN 32-64-128 (configs/deml/small_cnn.yaml, Fashion-MNIST values), "
        f"trained {options.steps} batches of 60 (5 classes × 12), Adam 1e-3, no validation, last weights "
        f"tested. Mean ± 95% CI over {len(options.seeds)} seeds (initialisation, batches). Learner s·l·: "
        "stream s (0: the image, 1: the attention crop), learner l (channel attention l)."
    )
    print(save("deml_readouts", header, results, METRICS))


if __name__ == "__main__":
    main()
