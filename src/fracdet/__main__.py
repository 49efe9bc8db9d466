"""``python -m fracdet`` runs the command-line interface."""

from fracdet.cli import entry

raise SystemExit(entry())
