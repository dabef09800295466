"""One-line configuration errors for the CLI: the key or file (with line and column) and the fix.

jsonargparse reports a mistake as the full usage plus an indented block; :class:`OneLineErrorParser` prints
one line instead (``--help`` still prints the usage) and checks config files with yaml before parsing them,
so syntax errors name the file, line and column.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from typing import Any, NoReturn

import yaml
from jsonargparse import ArgumentParser, Namespace, Path
from lightning.pytorch.cli import LightningArgumentParser

#: jsonargparse's lines that frame a ``Union`` failure rather than say what is wrong.
_FRAMING = re.compile(r"Does not validate|Subtypes:|Errors:|Given value|- Expected a <class 'NoneType'>")


def check_config_file(path: str | os.PathLike) -> None:
    """Raise ``TypeError`` with one line if the file at ``path`` is not YAML holding a mapping of options."""
    try:
        root = yaml.compose(Path(path, mode="fr").get_content(), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(filter(None, [error.context, error.problem]))
        raise TypeError(f"config file {path}{where}: invalid YAML ({problem}); fix the syntax") from None
    if root is None:
        raise TypeError(f"config file {path} is empty; write options into it (key: value) or leave it out")
    if not isinstance(root, yaml.MappingNode):
        start = root.start_mark
        raise TypeError(
            f"config file {path}, line {start.line + 1}, column {start.column + 1}: expected a mapping of "
            f"options (key: value), found a {root.id}"
        )


def unknown_option(location: str, name: str, accepted: list[str]) -> str:
    """Message for an unknown option ``name`` at ``location``: the closest accepted names, else all."""
    close = difflib.get_close_matches(name, accepted, n=3)
    fix = " or ".join(f"'{c}'" for c in close) if close else None
    hint = f"did you mean {fix}?" if fix else f"the accepted options are {', '.join(sorted(accepted))}"
    return f"{location}: " * bool(location) + f"unknown option '{name}'; {hint}"


def init_arg_names(class_path: str) -> list[str]:
    """The ``init_args`` names jsonargparse accepts for the class at ``class_path``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(_import(class_path), fail_untyped=False)
    return sorted({action.dest.split(".")[0] for action in parser._actions} - {"help"})


def unknown_class(location: str, class_path: str, base: type) -> str:
    """Message for a ``class_path`` that does not import: the module tried and the ``base`` subclasses
    it offers."""
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError):
        return f"{location}: cannot import '{class_path}': no module '{module_name}'; check the module path"
    classes = sorted(
        key
        for key, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, base) and value is not base and key[0] != "_"
    )
    kind = "classes" if base is object else f"{base.__name__} subclasses"
    offer = f"the {kind} there are {', '.join(classes)}" if classes else "check the name"
    return f"{location}: module '{module_name}' has no class '{name}'; {offer}"


def _import(class_path: str) -> type:
    """The class named by a dotted ``class_path``."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _message_parts(message: str) -> tuple[list[str], list[str], str]:
    """The nested keys, the nested class paths and the innermost reason of a jsonargparse error message.

    jsonargparse raises plain-text errors, nesting each level as ``Parser key "model":`` or ``Problem with
    given class_path 'X':`` followed by indented lines; the text is the only place these parts exist.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    class_paths = re.findall(r"Problem with given class_path '([^']+)'", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    nested = [i for i, line in enumerate(lines) if re.match(r"(- )?(Parser key|Problem with given)", line)]
    start = nested[-1] + 1 if nested else 0
    after = lines[start - 1].split(":", 1)[1].strip() if nested else ""  # on the innermost level's line
    reasons = [after] if after else [line for line in lines[start:] if not _FRAMING.match(line)]
    reason = re.sub(r"<class '([\w.]+)'>", r"\1", (reasons or lines or [""])[0].removeprefix("- "))
    return keys, class_paths, reason


def one_line(message: str, parser: OneLineErrorParser) -> str:
    """One line for a jsonargparse error ``message`` of ``parser``: the key and the fix where known."""
    # The patterns below are jsonargparse 4's wording of its reasons.
    keys, class_paths, reason = _message_parts(message)
    location = ".init_args.".join(keys)
    if class_paths and (option := re.fullmatch(r"Option '(.+)' is not accepted", reason)):
        return unknown_option(f"{location}.init_args", option[1], init_arg_names(class_paths[-1]))
    if class_paths and re.match(r"module '.+' has no attribute|No module named", reason):
        base = parser.subclass_bases.get(location, object)
        return unknown_class(f"{location}.class_path", class_paths[-1], base)
    if option := re.search(r"does not accept option '(.+)'|unrecognized arguments: -*(\S+)", reason):
        return _unknown_key(option[1] or option[2], parser)
    if missing := re.fullmatch(r"File does not exist: '(.+)'", reason):
        return f"{location}: file {missing[1]} does not exist; check the path"
    return f"{location}: " * bool(location) + reason


def _unknown_key(key: str, parser: ArgumentParser) -> str:
    """Message for an unknown dotted ``key`` of ``parser``, with the close names in its section."""
    section, _, name = key.rpartition(".")
    prefix = f"{section}." if section else ""
    names = {a.dest[len(prefix) :].split(".")[0] for a in parser._actions if a.dest.startswith(prefix)}
    return unknown_option(section, name, sorted(names - {"help"}))


class OneLineErrorParser(LightningArgumentParser):
    """LightningArgumentParser whose usage errors are one line on stderr (exit status 2) and whose config
    files are checked with yaml first. ``exit_on_error=False`` and ``JSONARGPARSE_DEBUG`` keep
    jsonargparse's behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subclass_bases: dict[str, type] = {}

    def add_subclass_arguments(self, baseclass: Any, nested_key: str, *args: Any, **kwargs: Any) -> Any:
        """Add the subclass arguments, remembering ``baseclass`` to offer its subclasses in errors."""
        if inspect.isclass(baseclass):
            self.subclass_bases[nested_key] = baseclass
        return super().add_subclass_arguments(baseclass, nested_key, *args, **kwargs)

    def parse_path(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Namespace:
        """Check the config file with yaml, then parse it."""
        check_config_file(path)
        return super().parse_path(path, *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print ``error: <one line>`` to stderr and exit with status 2."""
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        self.exit(2, f"error: {one_line(message, parser)}\n")
