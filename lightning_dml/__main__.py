"""``python -m lightning_dml`` runs the CLI."""

from lightning_dml.cli import main

main()
