"""``python -m fracdet`` runs the command-line interface."""

from fracdet.cli import main

raise SystemExit(main())
