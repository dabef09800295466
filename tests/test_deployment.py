"""Deployment files: the Docker images install the package as the README does; the cluster scripts run DDP.

Docker itself is not available here: the Dockerfiles are checked by reading them. The cluster scripts run
for real with two CPU processes (gloo): ``torchrun`` as is, ``srun`` replaced by a stand-in that starts the
tasks with SLURM's variables, so that Lightning's own ``TorchElasticEnvironment`` / ``SLURMEnvironment``
set up the process group.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_dml.cli import DMLCLI
from lightning_dml.data.sampler import ClassBalancedBatchSampler
from tests.conftest import REPO, data_module_of, quick_cli_args

DOCKERFILES = [REPO / "docker/Dockerfile", REPO / "docker/Dockerfile.cpu"]
SBATCH = REPO / "cluster/slurm_ddp.sbatch"
TORCHRUN = REPO / "cluster/torchrun.sh"
QUICKSTART = REPO / "configs/quickstart.yaml"
# pip options followed by a value (the value is not a thing to install).
PIP_OPTIONS_WITH_VALUE = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--root-user-action",
    "--upgrade-strategy",
    "-C",
    "--config-settings",
    "--only-binary",
    "--no-binary",
    "--platform",
    "--python-version",
}


def cpu_run(runs: Path) -> list[str]:
    """Two CPU processes instead of GPUs, one quick epoch logging under ``runs``; appended after the
    scripts' own arguments (the scripts pass ``--config`` themselves, so ``quick_cli_args``' is dropped)."""
    cpu_only = ["--trainer.accelerator", "cpu", "--test_after_fit", "false"]
    cpu_only += ["--trainer.sync_batchnorm", "false"]  # PyTorch's SyncBatchNorm needs GPUs
    return [*cpu_only, *quick_cli_args(runs)[2:]]


def run_launch_script(
    script: Path, env: dict[str, str], cwd: Path, runs: Path
) -> subprocess.CompletedProcess:
    """Run a launch script with :func:`cpu_run` arguments, as the two-process tests do."""
    return subprocess.run(
        ["bash", str(script), *cpu_run(runs)], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def local_pip_installs(command: str) -> list[tuple[bool, str]]:
    """``(editable, path)`` for each local path that the ``pip install`` commands of a shell line install.

    Options that change how pip installs (``--no-cache-dir``, an index URL) are ignored; named packages
    (``torch``) are not local paths and are left out.
    """
    installs = []
    for segment in re.split(r"&&|\|\||;", command):
        tokens = shlex.split(segment)
        starts = [i for i in range(len(tokens) - 1) if tokens[i : i + 2] == ["pip", "install"]]
        if not starts:
            continue
        arguments = iter(tokens[starts[0] + 2 :])
        for token in arguments:
            if token in ("-e", "--editable"):
                installs.append((True, next(arguments)))
            elif token in PIP_OPTIONS_WITH_VALUE:
                next(arguments)
            elif not token.startswith("-") and token.startswith((".", "/")):
                installs.append((False, token))
    return installs


def readme_first_command() -> str:
    """The first line of the README's first ``bash`` block."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert block, "README.md has no ```bash block"
    return block.group(1).splitlines()[0]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(KEYWORD, arguments)``: continuations joined, comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (keyword.upper(), arguments.strip())
        for keyword, _, arguments in (line.strip().partition(" ") for line in joined.splitlines())
        if keyword
    ]


def console_scripts() -> set[str]:
    """The console scripts of the installed package (pyproject.toml's ``[project.scripts]``)."""
    entry_points = importlib.metadata.distribution("lightning-dml").entry_points
    return {entry.name for entry in entry_points if entry.group == "console_scripts"}


def dockerignored(path: str) -> bool:
    """Whether a ``.dockerignore`` pattern excludes the path or a folder above it (no ``!`` exceptions)."""
    patterns = [
        line.strip().lstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern)
        or (pattern.startswith("**/") and fnmatch.fnmatch(prefix, pattern[3:]))
        for pattern in patterns
        for prefix in prefixes
    )


@pytest.mark.parametrize(
    ("command", "installs"),
    [
        ("pip install -e . && lightning-dml fit --config configs/quickstart.yaml", [(True, ".")]),
        ('python -m pip install --no-cache-dir --editable ".[dev]"', [(True, ".[dev]")]),
        ("pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision", []),
        ("pip install -c constraints.txt . ; pip install ./extra", [(False, "."), (False, "./extra")]),
        ("mkdir -p /data && ln -s /data data", []),
    ],
)
def test_local_pip_installs_finds_what_a_command_installs_from_the_checkout(command, installs):
    assert local_pip_installs(command) == installs


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_installs_the_package_the_way_the_readme_does(dockerfile):
    readme = local_pip_installs(readme_first_command())
    assert readme, f"README's first command installs no local package: {readme_first_command()!r}"
    steps = instructions(dockerfile)
    runs = [
        (i, local_pip_installs(arguments)) for i, (keyword, arguments) in enumerate(steps) if keyword == "RUN"
    ]
    installs = [(i, install) for i, found in runs for install in found]
    assert [install for _, install in installs] == readme, (
        f"{dockerfile.name} installs the package with {[install for _, install in installs]} but README.md's "
        f"first command with {readme}: make them the same pip install"
    )
    # "." is the repository in both: the build context (the checkout) is first copied to the working folder.
    copy = steps.index(("COPY", ". ."))
    assert copy < installs[0][0]
    assert any(keyword == "WORKDIR" for keyword, _ in steps[:copy])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_entrypoint_is_the_declared_console_script(dockerfile):
    entrypoints = [
        json.loads(arguments) for keyword, arguments in instructions(dockerfile) if keyword == "ENTRYPOINT"
    ]
    assert console_scripts() == {"lightning-dml", "lightning-dml-cache"}  # the cache: --entrypoint
    assert entrypoints == [["lightning-dml"]], (
        f"{dockerfile.name}: ENTRYPOINT must be the console script alone"
    )


def test_gpu_image_uses_a_cuda_pytorch_base_and_the_cpu_image_cpu_wheels():
    gpu = dict(instructions(DOCKERFILES[0]))
    assert re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:[\d.]+-cuda12\.\d+-cudnn9-runtime", gpu["ARG"])
    assert gpu["FROM"] == "${BASE_IMAGE}"
    cpu = instructions(DOCKERFILES[1])
    assert cpu[0] == ("FROM", "python:3.11-slim")
    torch_install = next(arguments for keyword, arguments in cpu if keyword == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu torch torchvision" in torch_install


def test_docker_readme_builds_every_dockerfile_and_mounts_data_and_runs():
    text = (REPO / "docker/README.md").read_text()
    built = re.findall(r"docker build -f (\S+)\s+-t \S+\s+\.", text)
    assert sorted(REPO / path for path in built) == sorted(DOCKERFILES)
    assert ":/data" in text and ":/runs" in text and "--gpus all" in text and "--shm-size" in text
    for dockerfile in DOCKERFILES:
        assert "ln -s /data data" in dockerfile.read_text() and "ln -s /runs runs" in dockerfile.read_text()


def test_dockerignore_keeps_what_the_install_and_the_configs_need():
    needed = ["pyproject.toml", "README.md", "lightning_dml/data/datamodule.py", "configs/quickstart.yaml"]
    assert [path for path in needed if dockerignored(path)] == []
    assert all(
        dockerignored(path) for path in ["runs/quickstart/version_0", ".git/HEAD", "data/CUB_200_2011"]
    )
    assert dockerignored("lightning_dml/__pycache__/cli.cpython-311.pyc")


@pytest.mark.parametrize("script", [SBATCH, TORCHRUN], ids=lambda path: path.name)
def test_cluster_script_is_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def clean_environment() -> dict[str, str]:
    """This process's environment without the variables of a cluster job or a distributed launcher."""
    launcher_variables = ("SLURM_", "TORCHELASTIC_", "MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_")
    return {key: value for key, value in os.environ.items() if not key.startswith(launcher_variables)}


def fake_launcher(directory: Path, name: str, body: str) -> dict[str, str]:
    """A clean environment whose PATH finds ``directory/name``, a bash script running ``body``, first."""
    directory.mkdir(exist_ok=True)
    launcher = directory / name
    launcher.write_text(f"#!/bin/bash\n{body}\n")
    launcher.chmod(0o755)
    return clean_environment() | {"PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def launched_cli_arguments(script: Path, launcher: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """Run the script with ``launcher`` replaced by a recorder; return the ``lightning-dml`` arguments."""
    record = tmp_path / "argv"
    env = fake_launcher(tmp_path / "bin", launcher, f'printf "%s\\0" "$@" > {record}') | env
    result = subprocess.run(["bash", str(script)], env=env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    argv = record.read_text().split("\0")[:-1]
    start = next(i for i in range(len(argv)) if argv[i : i + 2] == ["lightning-dml", "fit"])
    return argv[start + 1 :]


@pytest.mark.parametrize(
    ("script", "launcher", "env"),
    [
        (SBATCH, "srun", {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "8"}),
        (TORCHRUN, "torchrun", {"NNODES": "2", "GPUS_PER_NODE": "4"}),
    ],
    ids=["slurm", "torchrun"],
)
def test_cluster_script_arguments_are_accepted_by_the_cli(
    script, launcher, env, tmp_path, capsys, monkeypatch
):
    env = env | {"SLURM_SUBMIT_DIR": str(REPO)}
    arguments = launched_cli_arguments(script, launcher, env, tmp_path)
    assert arguments[:5] == [
        "fit",
        "--config",
        "configs/data/cub.yaml",
        "--config",
        "configs/resnet50_ms.yaml",
    ]
    assert "configs/ddp.yaml" in arguments
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["lightning-dml"])
    with pytest.raises(SystemExit) as exit_:
        DMLCLI(args=[*arguments, "--print_config"])
    assert exit_.value.code in (0, None)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert (trainer["num_nodes"], int(trainer["devices"])) == (2, 4)
    assert (trainer["accelerator"], trainer["strategy"], trainer["sync_batchnorm"]) == ("gpu", "ddp", True)


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@functools.cache
def steps_per_rank_of_quickstart(world_size: int) -> int:
    """Optimizer steps per rank in the quickstart's first epoch with ``world_size`` processes."""
    data = data_module_of("configs/quickstart.yaml")
    data.setup("fit")
    sampler = ClassBalancedBatchSampler(
        data.train_set.labels,
        data.sampler.classes_per_batch,
        data.sampler.samples_per_class,
        seed=data.seed,
        num_replicas=world_size,
        rank=0,
    )
    return len(sampler)


def assert_two_process_run(result: subprocess.CompletedProcess, runs: Path) -> None:
    """The run used two gloo processes and each trained on half of the quickstart's batches."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "distributed_backend=gloo" in output
    started = re.findall(r"Initializing distributed: GLOBAL_RANK: (\d), MEMBER: \d/(\d)", output)
    assert sorted(started) == [("0", "2"), ("1", "2")]  # the launcher's processes, none added by Lightning
    checkpoint = torch.load(runs / "quickstart/version_0/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == steps_per_rank_of_quickstart(2) < steps_per_rank_of_quickstart(1)


def test_torchrun_script_trains_with_two_processes(tmp_path):
    env = clean_environment() | {
        "CONFIGS": str(QUICKSTART),
        "GPUS_PER_NODE": "2",
        "RDZV_ENDPOINT": f"localhost:{free_port()}",
        "RDZV_ID": tmp_path.name,
    }
    result = run_launch_script(TORCHRUN, env, REPO, tmp_path / "runs")
    assert_two_process_run(result, tmp_path / "runs")


# srun on one node: start SLURM_NTASKS copies of the command, each with its own task variables.
SRUN_STAND_IN = """pids=()
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
  SLURM_PROCID=$rank SLURM_LOCALID=$rank SLURM_NODEID=0 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status"""


def test_sbatch_script_trains_with_two_slurm_tasks(tmp_path):
    env = fake_launcher(tmp_path / "bin", "srun", SRUN_STAND_IN)
    env |= {
        "CONFIGS": str(QUICKSTART),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "lightning-dml",
        "SLURM_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_CPUS_PER_TASK": "0",
        "MASTER_PORT": str(free_port()),
    }
    result = run_launch_script(SBATCH, env, tmp_path, tmp_path / "runs")
    assert_two_process_run(result, tmp_path / "runs")
