"""``lightning-dml-cache``: decode a data config's images once, into the folder its ``cache`` key names.

    lightning-dml-cache --config configs/data/cub.yaml --data.init_args.root /data \\
        --data.init_args.cache /scratch/cub_256 [--short_side 256] [--workers 8]

Takes the training configs (only their ``data`` section is read) and the same ``--data.*`` overrides, so
the data module that is cached is the one that trains; then train with the same ``data.init_args.cache``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning_dml.errors import ConfigError, LightningDMLError


def split_configs(args: list[str]) -> tuple[list[str], list[str]]:
    """Return the ``--config`` files named in ``args`` and the other arguments, in order."""
    configs, rest, items = [], [], iter(args)
    for arg in items:
        if arg == "--config":
            configs.append(next(items, ""))
        elif arg.startswith("--config="):
            configs.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    return configs, rest


def data_section(path: str) -> dict[str, Any] | None:
    """Return the ``data`` section of a YAML config file (``None`` without one)."""
    import yaml

    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path!r}; pass the data config the run trains with")
    return (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("data")


def main(args: list[str] | None = None) -> None:
    """Console entry point: prepare the cache of the configured data module, errors as one line."""
    from jsonargparse import ArgumentParser

    from lightning_dml.data.cache import describe, prepare_cache
    from lightning_dml.data.image_files import ImageFileDataModule

    parser = ArgumentParser(prog="lightning-dml-cache", description=__doc__)
    parser.add_subclass_arguments(ImageFileDataModule, "data", required=True)
    parser.add_argument("--short_side", type=int, default=256, help="shorter side of the stored images")
    parser.add_argument("--workers", type=int | None, default=None, help="processes (default: CPUs, max 8)")
    configs, rest = split_configs(sys.argv[1:] if args is None else args)
    try:
        parsed = None
        for path in configs:
            spec = data_section(path)
            if spec:
                parsed = parser.parse_object({"data": spec}, namespace=parsed)
        parsed = parser.parse_args(rest, namespace=parsed)
        module = parser.instantiate_classes(parsed).data
        manifest = prepare_cache(module, parsed.short_side, parsed.workers)
        print(f"{module.cache}: the cache of {describe(manifest)}; train with data.init_args.cache set to it")
    except LightningDMLError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
