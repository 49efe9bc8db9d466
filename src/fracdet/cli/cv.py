"""``fracdet cv``: group-aware, stratified k-fold cross-validation of a training configuration."""

from __future__ import annotations

import argparse
from typing import Any


def add_cv(sub: Any) -> None:
    from fracdet.cli.train import train_parser

    p = sub.add_parser(
        "cv", parents=[train_parser()], conflict_handler="resolve",
        help="cross-validate a training configuration (group-aware stratified k-fold)",
        description="Train the configuration given by the usual `fracdet train` options (or --config FILE) once "
        "per fold of a group-aware, stratified k-fold split (duplicate groups never straddle folds): each fold is "
        "held out once; early stopping, calibration and operating points use a validation share of the other "
        "folds; given splits are ignored (the folds replace them). Writes per-fold held-out metrics and their mean ± sd (metrics.json, metrics.csv, metrics.txt).",
    )
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--out", default="", help="cv folder (default runs/cv-MODEL-TIMESTAMP); fold K's run in fold-K/run")
    p.set_defaults(func=_cmd_cv)


def _cmd_cv(a: argparse.Namespace) -> int:
    from fracdet.cli.train import workflow_config
    from fracdet.crossval import cross_validate

    cfg = workflow_config(a, "cv", "cross-validate")
    r = cross_validate(cfg, a.folds, a.out or None)
    print(r.table)
    print(f"\nwritten: {r.out_dir}/metrics.json, metrics.csv, metrics.txt; each fold's run in {r.out_dir}/fold-K/run")
    return 0


__all__ = ["add_cv"]
