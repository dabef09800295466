"""Start-up time of ``lightning-dml``: ``--help`` and a config mistake against ``import lightning.pytorch``.

    python -m benchmarks.startup [--repeats 5] [--all]

Every command runs in a fresh ``python`` subprocess from the repository root, on one thread
(``OMP_NUM_THREADS=1``) and with this checkout first on ``PYTHONPATH``. The rounds are interleaved (each
command once per round), so background load falls on all of them alike, and the best round of each is
kept. Target (issue 15): each ``lightning-dml`` command within 1.2 × the lightning import. ``--all`` adds
the other config mistakes (a wrong ``class_path``, a missing config file). Writes ``results/startup.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results"
TARGET = 1.2
QUICKSTART = ["fit", "--config", "configs/quickstart.yaml"]

#: name -> (python arguments, expected exit status); the first is the reference.
COMMANDS = {
    'python -c "import lightning.pytorch"': (["-c", "import lightning.pytorch"], 0),
    "lightning-dml --help": (["-m", "lightning_dml", "--help"], 0),
    "typo'd key (quickstart)": (
        ["-m", "lightning_dml", *QUICKSTART, "--model.init_args.embeding_size", "64"],
        2,
    ),
}
MORE_MISTAKES = {
    "wrong class_path (quickstart)": (
        ["-m", "lightning_dml", *QUICKSTART, "--model.class_path", "lightning_dml.methods.NoSuchModule"],
        2,
    ),
    "missing config file": (["-m", "lightning_dml", "fit", "--config", "nothere.yaml"], 2),
}


def seconds(arguments: list[str], status: int) -> float:
    """Wall-clock seconds of ``python *arguments`` in a fresh process; it must exit with ``status``."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *arguments], cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != status:
        raise SystemExit(
            f"{arguments} exited {result.returncode}, expected {status}:\n{result.stderr[-2000:]}"
        )
    return elapsed


def render(best: dict[str, float], repeats: int) -> str:
    """The markdown report: best seconds, ratio to the lightning import and whether the target is met."""
    reference = next(iter(best.values()))
    lines = [
        "# Start-up time",
        "",
        f"`python -m benchmarks.startup`: best of {repeats} interleaved fresh processes, "
        f"load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        "",
        f"| command | seconds | × lightning import | target ≤ {TARGET} × |",
        "|---|---|---|---|",
    ]
    for index, (name, value) in enumerate(best.items()):
        ratio = value / reference
        met = "–" if index == 0 else ("met" if ratio <= TARGET else "not met")
        lines.append(f"| `{name}` | {value:.2f} | {ratio:.2f} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Time every command, print the table and write it to ``results/startup.md``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the best of each command is kept")
    parser.add_argument("--all", action="store_true", help="also time the other config mistakes")
    arguments = parser.parse_args()
    commands = COMMANDS | (MORE_MISTAKES if arguments.all else {})
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(arguments.repeats):
        for name, (args, status) in commands.items():
            times[name].append(seconds(args, status))
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    report = render({name: min(values) for name, values in times.items()}, arguments.repeats)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.md").write_text(report)


if __name__ == "__main__":
    main()
