"""Two-phase transfer-learning training on Lightning: head first, then fine-tuning.

Phase 1 trains the head with the backbone frozen; phase 2 unfreezes the backbone (all of it,
or from a named stage on) with a lower learning rate than the head's.  Each phase has early
stopping and keeps its best checkpoint.  The run folder gets the resolved config, the split,
per-epoch metrics, curves, evaluation figures and the final artifact.

Every epoch ends with a resumable checkpoint (``checkpoints/<phase>-last.ckpt``, written
atomically: Lightning's full state — epoch, optimizer, scheduler, early stopping, best
checkpoint, the metrics table).  Shuffling, augmentation and dropout are seeded per (phase,
epoch), so :func:`resume` continues an interrupted run to the same result as an uninterrupted one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fracdet.boxtraining import map_head_kwargs, training_boxes
from fracdet.config import TrainConfig
from fracdet.data.layouts import Dataset, load_dataset
from fracdet.data.loader import EpochShuffle, make_loader
from fracdet.data.splits import assert_no_group_leakage
from fracdet.errors import DatasetError, FracdetError
from fracdet.fsutil import write_json
from fracdet.models import create_model
from fracdet.data.augment import build_train_transforms
from fracdet.trainfinish import finish_run
from fracdet.trainloop import PHASES, FractureModule, build_trainer, load_best, log_phase_end
from fracdet.transforms import AugmentConfig, build_transforms, spec_from_model

log = logging.getLogger(__name__)
RUN_DIR_ENV = "FRACDET_RUN_DIR"  # shared with DDP worker processes so all ranks use one folder


def is_first_process() -> bool:
    """Whether this is the first process of a (possibly multi-node) run — the one that writes the
    run folder: ``RANK`` 0 (torchrun), ``SLURM_PROCID`` 0 (srun), else ``NODE_RANK`` and
    ``LOCAL_RANK`` both 0 (Lightning's own launcher); True when not distributed."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0) or 0) == 0 and int(os.environ.get("LOCAL_RANK", 0) or 0) == 0


@dataclass
class TrainResult:
    run_dir: Path
    artifact_path: Path | None
    metrics: dict[str, Any]


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if os.environ.get(RUN_DIR_ENV) and "LOCAL_RANK" in os.environ:  # a DDP worker launched by rank 0
        return Path(os.environ[RUN_DIR_ENV])
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model}-{stamp}"


def prepare_data(cfg: TrainConfig) -> Dataset:
    """Load the dataset, audit it (cached hashes) and give it a leakage-free, group-aware split.

    Given splits that share duplicates (exact, pixel-identical or near) or whose duplicates
    carry conflicting labels are refused unless ``cfg.allow_leakage``. When fracdet splits
    itself, duplicate groups never straddle splits and label-conflict groups are left out
    (kept with ``allow_leakage``). What was found is attached as ``ds.audit_summary``.
    """
    from fracdet.data.audit import audit_dataset, audit_split

    ds = load_dataset(cfg.data, layout=cfg.layout)
    report = audit_dataset(ds, progress=cfg.progress)
    present = {s.split for s in ds.samples}
    keeps_given = not cfg.resplit and None not in present and "train" in present
    c = report.counts()
    problems = keeps_given and (c["leaking_groups"] or c["declared_group_leaks"] or c["conflict_groups"])
    if problems and not cfg.allow_leakage:
        raise DatasetError(f"{cfg.data}: {report.summary_line()}; see `fracdet audit {cfg.data}`, re-split with "
                           "--resplit (or `fracdet split --merge`), or train anyway with --allow-leakage")
    conflicts = "keep" if (cfg.allow_leakage or keeps_given) else "exclude"
    source_fp = ds.fingerprint()
    ds, report, excluded = audit_split(ds, fractions=cfg.fractions, seed=cfg.seed, resplit=cfg.resplit,
                                       conflicts=conflicts, report=report)
    if not cfg.allow_leakage:
        assert_no_group_leakage(ds)
    for name in ("train", "val"):
        labels = {s.label for s in ds.by_split(name)}
        if len(labels) < 2:
            raise DatasetError(f"{cfg.data}: the {name} split needs both classes, it has {sorted(labels) or 'none'}")
    ds.audit_summary = {  # type: ignore[attr-defined]
        "fingerprint": source_fp,
        "audit": {
            "split_groups": "audit", "conflicts": conflicts, "allow_leakage": bool(cfg.allow_leakage),
            "given_splits_kept": bool(keeps_given), "leakage_in_given_splits": bool(problems),
            "duplicate_groups": c["duplicate_groups"], "leaking_groups": c["leaking_groups"] if keeps_given else 0,
            "declared_group_leaks": c["declared_group_leaks"] if keeps_given else 0,
            "conflict_groups": c["conflict_groups"], "excluded_conflict_files": len(excluded),
            "unreadable": c["unreadable"], "truncated": c["truncated"],
            "threshold": report.settings["threshold"], "fine_threshold": report.settings["fine_threshold"],
        },
    }
    return ds


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run both phases and write the run folder; returns the artifact path (rank 0).

    With ``resume`` (see :func:`resume`) the run folder ``cfg.out`` exists: its split is checked,
    finished phases are skipped and an unfinished one continues from its last checkpoint."""
    cfg.validate()  # a bad stage name or a missing GPU: refused now, not after phase 1
    run_dir = _run_dir(cfg)
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        return _train(cfg, run_dir, resume)
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def _train(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> TrainResult:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ds = prepare_data(cfg)
    if resume:
        _check_same_split(ds, run_dir)
    model = create_model(cfg.model, pretrained=cfg.pretrained, head_hidden=cfg.head_hidden,
                         dropout=cfg.dropout, weights_path=cfg.weights, **map_head_kwargs(cfg))
    model = model.to(memory_format=torch.channels_last)  # measured 1.5× faster training steps on CPU
    spec = spec_from_model(model.spec, resize=cfg.resize)
    if cfg.input_size:
        spec.input_size = int(cfg.input_size)
    train_s, val_s, test_s = ds.by_split("train"), ds.by_split("val"), ds.by_split("test")
    n_pos = sum(s.label for s in train_s)
    pos_weight = (len(train_s) - n_pos) / max(n_pos, 1) if cfg.class_weighting else 1.0

    is_zero = is_first_process()
    if is_zero and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {**cfg.to_dict(), "resolved_input_size": spec.input_size})
        ds.to_csv(run_dir / "split.csv")
        log.info("run folder %s: train %d, val %d, test %d", run_dir, len(train_s), len(val_s), len(test_s))

    train_loader = make_loader(train_s, build_train_transforms(spec, cfg.augment),
                               cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                               cache=cfg.cache_images, seed=cfg.seed)
    if model.map_head is not None:  # the same films, each with its box mask (data/boxtargets.py)
        from fracdet.data.boxtargets import make_box_loader

        grid = None
        if model.box_head is not None:  # its targets on the box head's grid, from the moved boxes
            grid = (spec.input_size // int(model.config["box_stride"]),) * 2
        train_loader = make_box_loader(train_s, build_train_transforms(spec, cfg.augment), training_boxes(cfg),
                                       cfg.batch_size, cfg.num_workers, cfg.cache_images, cfg.seed, box_grid=grid,
                                       box_dense=cfg.box_dense)
    val_loader = make_loader(val_s, build_transforms(spec), cfg.batch_size, num_workers=cfg.num_workers,
                             cache=cfg.cache_images)
    rows: list[dict[str, Any]] = []
    module = FractureModule(model, cfg, pos_weight=pos_weight, phase="head")
    lasts = {phase: run_dir / "checkpoints" / f"{phase}-last.ckpt" for phase in PHASES}
    for number, (phase, epochs) in enumerate(zip(PHASES, (cfg.phase1_epochs, cfg.phase2_epochs)), 1):
        if epochs <= 0:
            continue
        label = f"phase {number}/2 {phase}"
        if resume and phase == "head" and cfg.phase2_epochs > 0 and lasts["finetune"].is_file():
            if is_zero:
                log.info("%s: finished before the interruption", label)
            continue
        ckpt_path = lasts[phase] if resume and lasts[phase].is_file() else None
        first_epoch = _check_checkpoint(ckpt_path, module) + 1 if ckpt_path is not None else 0
        if phase == "head":
            model.freeze_backbone()
            what = "the head, backbone frozen"
        else:
            model.unfreeze_backbone(cfg.unfreeze_from)
            what = f"the head and the backbone ({f'from {cfg.unfreeze_from} on' if cfg.unfreeze_from else 'all of it'})"
        module.phase = phase
        if isinstance(train_loader.sampler, EpochShuffle):  # order and augmentation per (phase, epoch)
            train_loader.sampler.start(number, first_epoch)
        version = f"resumed-{_dt.datetime.now():%Y%m%d-%H%M%S}" if ckpt_path is not None else ""
        trainer = build_trainer(cfg, run_dir, phase, epochs, rows, log_version=version)
        if is_zero:
            if ckpt_path is not None:
                log.info("%s: resuming after epoch %d of %d from %s (training %s)", label, first_epoch, epochs,
                         ckpt_path, what)
            else:
                log.info("%s: training %s, up to %d epoch(s)", label, what, epochs)
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
        best_path = load_best(module, trainer)
        if is_zero:
            log_phase_end(label, cfg, trainer, best_path)
    if not is_zero:
        return TrainResult(run_dir, None, {})
    return TrainResult(run_dir, *finish_run(cfg, ds, model, spec, run_dir, rows))


def resume(run_dir: str | Path, progress: bool | None = None) -> TrainResult:
    """Continue an interrupted run in ``run_dir`` from its saved config, split and last
    checkpoint: finished phases are skipped, the unfinished one goes on from the end of its
    last completed epoch, and the run ends as an uninterrupted run with the same seed would.

    Refused with one line (:class:`~fracdet.errors.FracdetError`) when the folder is missing or
    not a run folder, the run has finished, or the data no longer gives the run's split."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FracdetError(f"{run}: no such run folder")
    try:
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise FracdetError(f"{run}: not a fracdet run folder (config.json: {type(exc).__name__})") from None
    if (run / "model.fracdet").is_file():
        raise FracdetError(f"{run}: this run has finished (model.fracdet is there); nothing to resume")
    if not (run / "split.csv").is_file():
        raise FracdetError(f"{run}: not a fracdet run folder (no split.csv)")
    cfg.out = str(run)
    if progress is not None:
        cfg.progress = progress
    log.info("resuming run %s", run)
    return train(cfg, resume=True)


def _check_same_split(ds: Dataset, run_dir: Path) -> None:
    """Refuse to resume when the data no longer gives the split the run started with."""
    path = run_dir / "split.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            saved = {(str((run_dir / r["path"]).resolve()), int(r["label"]), r["split"]) for r in csv.DictReader(fh)}
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
        raise FracdetError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if saved != {(str(Path(s.path).resolve()), int(s.label), s.split or "") for s in ds.samples}:
        raise FracdetError(f"{run_dir}: the data at {ds.root} no longer gives this run's split (split.csv); "
                           "resume needs the data the run started with")


def _check_checkpoint(path: Path, module: FractureModule) -> int:
    """The epoch of a last checkpoint that loads (tensors and plain values only) and fits ``module``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state, epoch = ckpt["state_dict"], int(ckpt["epoch"])
        ckpt["loops"], ckpt["optimizer_states"]  # noqa: B018  (a full checkpoint, not weights only)
    except Exception as exc:  # truncated, not a torch file, weights only, or unexpected objects
        raise FracdetError(f"{path}: not a resumable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or set(state) != set(module.state_dict()):
        raise FracdetError(f"{path}: the checkpoint does not fit the run's model {module.cfg.model!r}")
    return epoch


def refinish(run_dir: str | Path) -> TrainResult:
    """Redo a run's last step — calibration, operating points, test evaluation, artifact and
    model card — from its saved config, split data and best checkpoint, without training.

    For a run that was interrupted after training, or to rebuild an artifact with a newer
    fracdet.  The data must be where ``config.json`` says (the same split is re-derived).
    """
    run = Path(run_dir)
    try:
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{run}: not a fracdet run folder ({exc})") from None
    ckpts = [run / "checkpoints" / f"{phase}-best.ckpt" for phase in ("finetune", "head")]
    ckpt = next((c for c in ckpts if c.is_file()), None)
    if ckpt is None:
        raise DatasetError(f"{run}: no best checkpoint in {run / 'checkpoints'}")
    ds = prepare_data(cfg)
    model = create_model(cfg.model, pretrained=False, head_hidden=cfg.head_hidden, dropout=cfg.dropout,
                         **map_head_kwargs(cfg))
    spec = spec_from_model(model.spec, resize=cfg.resize)
    if cfg.input_size:
        spec.input_size = int(cfg.input_size)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    rows = read_metrics_csv(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
    log.info("re-finishing %s from %s", run, ckpt)
    return TrainResult(run, *finish_run(cfg, ds, model.to(memory_format=torch.channels_last), spec, run, rows))


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a run's metrics.csv back into rows (numbers as floats)."""
    with open(path, newline="") as f:
        out = []
        for r in csv.DictReader(f):
            out.append({k: (r[k] if k == "phase" else (float(r[k]) if r[k] not in ("", None) else None)) for k in r})
        return out


__all__ = ["AugmentConfig", "FractureModule", "TrainConfig", "TrainResult", "prepare_data", "resume", "train"]
