"""``fracdet tune``: Optuna search over ``fracdet train``'s options (validation ROC-AUC, pruning,
a resumable SQLite study), writing the best configuration for ``fracdet train --config``."""

from __future__ import annotations

import argparse
from typing import Any


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 224,320, got {text!r}") from None
    if not sizes or any(not 8 <= s <= 4096 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected sizes between 8 and 4096, got {text!r}")
    return sizes


def add_tune(sub: Any) -> None:
    from fracdet.cli.train import train_parser

    p = sub.add_parser(
        "tune", parents=[train_parser()], conflict_handler="resolve",
        help="search training options with Optuna (validation ROC-AUC; resumable) and write the best config",
        description="Search `fracdet train`'s options (learning rates, weight decay, dropout, head width, "
        "augmentation strengths, the stage phase 2 unfreezes from, --input-sizes) with Optuna's TPE sampler; the "
        "other training options (flags or --config FILE) stay fixed. Objective: validation ROC-AUC — trials train "
        "on the train and val splits only and never read a test image. Epochs report to a median pruner. The study "
        "is kept in SQLite (--storage, default OUT/study.db): the same command again continues it up to --trials "
        "finished trials. Writes the best configuration (OUT/best.json; `fracdet train DATA --config OUT/best.json`), "
        "OUT/trials.csv and OUT/tune.json.",
    )
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default 20)")
    p.add_argument("--out", default="", help="tune folder (default runs/tune-MODEL)")
    p.add_argument("--storage", help="Optuna storage: a SQLite file or a database URL (default OUT/study.db)")
    p.add_argument("--study-name", default="fracdet-tune", help="study name in the storage (default fracdet-tune)")
    p.add_argument("--input-sizes", type=_sizes, metavar="S1,S2,...", help="input sizes to choose from, e.g. 224,320")
    p.add_argument("--best", metavar="FILE", help="where the best configuration goes (.json or .yaml; "
                   "default OUT/best.json)")
    p.add_argument("--keep-runs", action="store_true", help="keep every trial's checkpoints and model file")
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(a: argparse.Namespace) -> int:
    from pathlib import Path

    from fracdet.cli.train import workflow_config
    from fracdet.errors import FracdetError
    from fracdet.tuning import tune

    cfg = workflow_config(a, "tune", "tune", " (a study resumes itself)")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise FracdetError("fracdet tune needs optuna: pip install 'fracdet[train]'") from None
    out = Path(a.out or f"runs/tune-{cfg.model}")
    r = tune(cfg, a.trials, out, storage=a.storage, input_sizes=a.input_sizes or (), best_path=a.best,
             keep_runs=a.keep_runs, study_name=a.study_name)
    print(f"{r.finished} finished trial(s), {r.pruned} pruned; best validation ROC-AUC {r.best_value:.4f}")
    for k, v in r.best_params.items():
        print(f"  {k} = {v}")
    print(f"\nbest configuration: {r.best_config} (fracdet train DATA --config {r.best_config})")
    print(f"written: {r.out_dir}/trials.csv, tune.json")
    return 0


__all__ = ["add_tune"]
