"""Every configuration mistake ends in one line on stderr naming the key or file and the fix (exit 2)."""

import sys
from pathlib import Path

import pytest

from lightning_dml.cli import main
from tests.conftest import REPO

QUICKSTART = ["fit", "--config", str(REPO / "configs/quickstart.yaml")]


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """No pytest arguments in ``sys.argv``: LightningCLI would warn on stderr about them next to ``args``."""
    monkeypatch.setattr(sys, "argv", ["lightning-dml"])


def error_line(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI on ``args``; check it exits with status 2 and one stderr line, and return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def config(tmp_path: Path, text: str) -> str:
    """Path of a config file holding ``text``."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--model.init_args.embeding_size", "64"],
            "model.init_args: unknown option 'embeding_size'; did you mean 'embedding_size'?",
        ),
        (
            ["--data.init_args.sampler.init_args.classes_per_bach", "4"],
            "data.init_args.sampler.init_args: unknown option 'classes_per_bach'; "
            "did you mean 'classes_per_batch'?",
        ),
        (
            ["--model.init_args.loss.init_args.alph", "2"],
            "model.init_args.loss.init_args: unknown option 'alph'; did you mean 'alpha'?",
        ),
        (
            ["--trainer.max_epochz", "3"],
            "trainer: unknown option 'max_epochz'; did you mean 'max_epochs' or 'min_epochs' or 'max_steps'?",
        ),
        (["--seed_everythinx", "3"], "unknown option 'seed_everythinx'; did you mean 'seed_everything'?"),
    ],
)
def test_typo_on_the_command_line_names_the_key_and_the_closest_names(args, expected, capsys):
    assert error_line([*QUICKSTART, *args], capsys) == f"error: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  init_args:\n    embeding_size: 8\n", "model.init_args: unknown option 'embeding_size'"),
        ("trainer:\n  max_epoch: 3\n", "trainer: unknown option 'max_epoch'; did you mean 'max_epochs'"),
        ("seed_everythin: 3\n", "unknown option 'seed_everythin'; did you mean 'seed_everything'?"),
    ],
)
def test_typo_in_a_config_file_names_the_key_and_the_closest_names(text, expected, tmp_path, capsys):
    line = error_line([*QUICKSTART, "--config", config(tmp_path, text)], capsys)
    assert line.startswith(f"error: {expected}")


def test_wrong_class_path_names_the_module_tried_and_its_subclasses(capsys):
    line = error_line([*QUICKSTART, "--model.class_path", "lightning_dml.methods.NoSuchModule"], capsys)
    assert line.startswith(
        "error: model.class_path: module 'lightning_dml.methods' has no class 'NoSuchModule'; "
        "the RetrievalModule subclasses there are "
    )
    assert "MetricLearning" in line and "DeML" in line


def test_class_path_of_a_missing_module_names_it(capsys):
    line = error_line([*QUICKSTART, "--data.class_path", "lightning_dml.nowhere.Digits"], capsys)
    assert line == (
        "error: data.class_path: cannot import 'lightning_dml.nowhere.Digits': no module "
        "'lightning_dml.nowhere'; check the module path"
    )


def test_empty_config_file_is_named(tmp_path, capsys):
    path = config(tmp_path, "# nothing yet\n")
    line = error_line(["fit", "--config", path], capsys)
    assert line == f"error: config file {path} is empty; write options into it (key: value) or leave it out"


def test_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    path = config(tmp_path, "model:\n  class_path: x\n  init_args: [\n")
    line = error_line(["fit", "--config", path], capsys)
    assert line.startswith(f"error: config file {path}, line 4, column 1: invalid YAML (")
    assert "<unicode string>" not in line


def test_config_that_is_not_a_mapping_is_named(tmp_path, capsys):
    path = config(tmp_path, "- seed\n")
    line = error_line(["fit", "--config", path], capsys)
    assert line == (
        f"error: config file {path}, line 1, column 1: expected a mapping of options (key: value), "
        "found a sequence"
    )


def test_missing_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "nothere.yaml"
    line = error_line(["fit", "--config", str(path)], capsys)
    assert line == f"error: config: file {path} does not exist; check the path"


def test_help_still_prints_the_full_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--trainer.max_epochs" in out and len(out.splitlines()) > 50
