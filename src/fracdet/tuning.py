"""Hyper-parameter search over ``fracdet train``'s options with Optuna (``fracdet tune``).

Each trial trains the base configuration with sampled options (learning rates, weight decay,
dropout, head width, augmentation strengths, the stage phase 2 unfreezes from, the input size
among given choices).  The objective is the validation ROC-AUC of the trained model — the test
split is never used: trials train from a manifest of the train and val splits only
(``OUT/split.csv``), so no trial can even read a test image.  Every epoch reports its validation
AUROC, and Optuna's ``MedianPruner`` stops trials that fall below the median of earlier trials at
the same epoch.

The study lives in SQLite (default ``OUT/study.db``): running the same command again continues it
until it holds ``trials`` finished (complete or pruned) trials; trials left running by an
interruption are marked failed.  The best configuration is written as a file that
``fracdet train --config FILE`` (and ``fracdet cv --config FILE``) takes.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from fracdet.config import TrainConfig, write_config_file
from fracdet.errors import FracdetError
from fracdet.fsutil import write_json, write_text

log = logging.getLogger(__name__)
STUDY_NAME = "fracdet-tune"
OBJECTIVE = "val_auroc"
NOT_WRITTEN = ("data", "out", "layout", "progress")  # given on the command line, not in a config file


@dataclass
class TuneResult:
    out_dir: Path
    best_config: Path
    best_value: float
    best_params: dict[str, Any]
    finished: int
    pruned: int


def suggest(trial: Any, base: TrainConfig, input_sizes: Sequence[int] = ()) -> TrainConfig:
    """A copy of ``base`` with the searched options sampled from ``trial``."""
    from fracdet.models.registry import get_spec

    cfg = replace(base, augment=replace(base.augment))
    cfg.head_lr = trial.suggest_float("head_lr", 1e-4, 3e-3, log=True)
    cfg.backbone_lr = trial.suggest_float("backbone_lr", 1e-5, 1e-3, log=True)
    cfg.phase2_head_lr = trial.suggest_float("phase2_head_lr", 3e-5, 3e-3, log=True)
    cfg.weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    cfg.dropout = trial.suggest_float("dropout", 0.0, 0.5)
    cfg.head_hidden = trial.suggest_categorical("head_hidden", [0, 128, 256, 512])
    stages = ["all", *get_spec(cfg.model).stages[1:]]
    chosen = trial.suggest_categorical("unfreeze_from", stages)
    cfg.unfreeze_from = None if chosen == "all" else chosen
    aug = cfg.augment
    if aug.enabled:
        aug.rotation = trial.suggest_float("augment.rotation", 0.0, 30.0)
        aug.translate = trial.suggest_float("augment.translate", 0.0, 0.15)
        aug.zoom = trial.suggest_float("augment.zoom", 0.0, 0.2)
        aug.brightness = trial.suggest_float("augment.brightness", 0.0, 0.3)
        aug.contrast = trial.suggest_float("augment.contrast", 0.0, 0.3)
        aug.erasing_p = trial.suggest_float("augment.erasing_p", 0.0, 0.3)
    if input_sizes:
        cfg.input_size = int(trial.suggest_categorical("input_size", sorted({int(s) for s in input_sizes})))
    return cfg


def options_of(cfg: TrainConfig) -> dict[str, Any]:
    """The options a config file holds for ``cfg`` (everything but the data, run folder and layout)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_WRITTEN}


def _pruning_callback(trial: Any) -> Any:
    """A Lightning callback reporting each validation AUROC to ``trial`` (one step per epoch over
    both phases) and pruning it when Optuna says so."""
    import optuna
    from lightning.pytorch.callbacks import Callback

    class ReportAndPrune(Callback):
        def __init__(self) -> None:
            self.step = 0

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get(OBJECTIVE)
            if value is None:
                return
            trial.report(float(value), self.step)
            self.step += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"{OBJECTIVE} {float(value):.4f} at epoch {self.step}: below the median")

    return ReportAndPrune()


def _train_only_manifest(cfg: TrainConfig, out: Path) -> Path:
    """``OUT/split.csv``: the train and val splits of the data as training would split it (test
    images left out, so no trial can read them); made once, reused when the study resumes."""
    from fracdet.data.layouts import Dataset
    from fracdet.train import prepare_data

    path = out / "split.csv"
    if path.is_file():
        return path
    ds = prepare_data(cfg)
    kept = [s for s in ds.samples if s.split in ("train", "val")]
    Dataset(kept, ds.root, ds.layout).to_csv(path)
    log.info("tune: %d training and %d validation images in %s (%d test images left out)",
             sum(s.split == "train" for s in kept), sum(s.split == "val" for s in kept), path,
             sum(s.split == "test" for s in ds.samples))
    return path


def storage_url(storage: str | None, out: Path) -> str:
    """An Optuna storage URL: a database URL as given, a file path as SQLite, default ``OUT/study.db``."""
    if storage and "://" in storage:
        return storage
    path = Path(storage) if storage else out / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def tune(base: TrainConfig, trials: int, out_dir: str | Path, storage: str | None = None,
         input_sizes: Sequence[int] = (), best_path: str | Path | None = None, seed: int | None = None,
         keep_runs: bool = False, study_name: str = STUDY_NAME) -> TuneResult:
    """Run (or continue) the study until it holds ``trials`` finished trials; write the best
    configuration (``best_path``, default ``OUT/best.json``), ``OUT/trials.csv`` and ``OUT/tune.json``."""
    import optuna

    if trials < 1:
        raise FracdetError(f"--trials {trials}: give at least one trial")
    base.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _train_only_manifest(base, out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=storage_url(storage, out), load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed if seed is None else seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left running by an interruption
        log.warning("tune: trial %d was interrupted; marked failed", t.number)
    done = _finished(study)
    log.info("tune: study %s holds %d finished trial(s); running %d more", study_name, done, max(trials - done, 0))

    def objective(trial: optuna.Trial) -> float:
        from fracdet.train import train
        from fracdet.trainloop import EXTRA_CALLBACKS

        cfg = suggest(trial, base, input_sizes)
        run = out / "trials" / f"trial-{trial.number:03d}"
        run_cfg = replace(cfg, data=str(manifest), layout="csv", out=str(run), resplit=False, int8=False,
                          fractions=(cfg.fractions[0], cfg.fractions[1], 0.0))  # no test split to carve out
        callback = _pruning_callback(trial)
        EXTRA_CALLBACKS.append(callback)
        try:
            result = train(run_cfg)
        finally:
            EXTRA_CALLBACKS.remove(callback)
            if not keep_runs:
                _drop_weights(run)
        value = float(result.metrics["val"]["roc_auc"])
        trial.set_user_attr("config", options_of(cfg))
        log.info("tune: trial %d validation ROC-AUC %.4f", trial.number, value)
        return value

    remaining = trials - done
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(FracdetError,))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise FracdetError(f"{out}: no trial finished (all pruned or failed); see {out / 'trials'}")
    best = study.best_trial
    best_cfg = Path(best_path) if best_path else out / "best.json"
    write_config_file(best_cfg, best.user_attrs["config"])
    pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    _write_trials(out / "trials.csv", study)
    write_json(out / "tune.json", {"study": study_name, "objective": "validation ROC-AUC (test split never used)",
                                   "best_trial": best.number, "best_value": best.value, "best_params": best.params,
                                   "best_config": str(best_cfg), "finished": _finished(study), "pruned": pruned,
                                   "trials_csv": str(out / "trials.csv")})
    return TuneResult(out, best_cfg, float(best.value), dict(best.params), _finished(study), pruned)


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _drop_weights(run: Path) -> None:
    """A finished trial keeps its metrics and report, not its checkpoints and model (disk)."""
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    (run / "model.fracdet").unlink(missing_ok=True)


def _write_trials(path: Path, study: Any) -> None:
    names = sorted({k for t in study.trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", OBJECTIVE, "epochs_reported", *names])
    for t in study.trials:
        w.writerow([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}",
                    len(t.intermediate_values), *[t.params.get(k, "") for k in names]])
    write_text(path, buf.getvalue())
