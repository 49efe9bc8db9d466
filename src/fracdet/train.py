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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fracdet import __version__
from fracdet.artifact import ModelArtifact, load_artifact, save_artifact
from fracdet.calibration import apply_calibration, calibrated_probability, expected_calibration_error
from fracdet.boxtraining import map_head_kwargs, training_boxes
from fracdet.config import TrainConfig
from fracdet.data.layouts import Dataset, load_dataset
from fracdet.data.loader import EpochShuffle, epoch_seed, make_loader
from fracdet.data.selection import split_manifest
from fracdet.data.splits import assert_no_group_leakage
from fracdet.errors import DatasetError, FracdetError
from fracdet.fsutil import atomic_path, write_json, write_text
from fracdet.logsetup import quiet_lightning
from fracdet.metrics import binary_metrics, with_bootstrap_ci
from fracdet.models import FracNet, create_model
from fracdet.data.augment import build_train_transforms
from fracdet.transforms import AugmentConfig, build_transforms, spec_from_model

quiet_lightning()  # Lightning's import gave its logger a console handler of its own: each line came twice
log = logging.getLogger(__name__)
RUN_DIR_ENV = "FRACDET_RUN_DIR"  # shared with DDP worker processes so all ranks use one folder
EXTRA_CALLBACKS: list[Callback] = []  # added to every phase's trainer while listed (fracdet tune's pruning)


def is_first_process() -> bool:
    """Whether this is the first process of a (possibly multi-node) run — the one that writes the
    run folder: ``RANK`` 0 (torchrun), ``SLURM_PROCID`` 0 (srun), else ``NODE_RANK`` and
    ``LOCAL_RANK`` both 0 (Lightning's own launcher); True when not distributed."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0) or 0) == 0 and int(os.environ.get("LOCAL_RANK", 0) or 0) == 0
# Phase 1 keeps the frozen backbone's BatchNorm in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
# Phase 2 writes its best checkpoint beside phase 1's (another file name) on purpose.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# Lightning's own use of a torch API torch has deprecated: nothing a fracdet user can change.
warnings.filterwarnings("ignore", category=FutureWarning, message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class FractureModule(L.LightningModule):
    """Binary fracture classifier: BCE-with-logits loss, accuracy and AUROC per epoch."""

    def __init__(self, model: FracNet, cfg: TrainConfig, pos_weight: float = 1.0, phase: str = "head") -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.phase = phase
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))
        self.train_acc = torchmetrics.classification.BinaryAccuracy()
        self.val_acc = torchmetrics.classification.BinaryAccuracy()
        self.val_auroc = torchmetrics.classification.BinaryAUROC()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        x, y = batch[0], batch[1]
        if len(x) == 0:
            return None
        if len(batch) == 5 and self.model.map_head is not None:  # box masks: + λ · map loss
            from fracdet.models.maploss import map_loss

            out = self.model.graph_outputs(x.contiguous(memory_format=torch.channels_last))
            logits = out["logit"]
            loss = self._loss(logits, y) + self.cfg.map_weight * map_loss(out["fracture_map"], batch[3], batch[4])
        else:
            logits = self(x)
            loss = self._loss(logits, y)
        self.train_acc.update(torch.sigmoid(logits), y.long())
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        if len(x) == 0:
            return
        logits = self(x)
        prob = torch.sigmoid(logits)
        self.val_acc.update(prob, y.long())
        self.val_auroc.update(prob, y.long())
        self.log("val_loss", self._loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=len(x))
        self.log("val_auroc", self.val_auroc, on_epoch=True, prog_bar=True, batch_size=len(x))

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        if self.phase == "head":
            groups = [{"params": self.model.head_parameters(), "lr": cfg.head_lr}]
            epochs = cfg.phase1_epochs
        else:
            groups = [
                {"params": [p for p in self.model.backbone_parameters() if p.requires_grad], "lr": cfg.backbone_lr},
                {"params": self.model.head_parameters(), "lr": cfg.phase2_head_lr},
            ]
            epochs = cfg.phase2_epochs
        name = cfg.optimizer.lower()
        if name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        elif name == "adamw":
            opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        elif name == "sgd":
            opt = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        else:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam, adamw, sgd)")
        if cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
            return {"optimizer": opt, "lr_scheduler": sched}
        if cfg.scheduler == "plateau":
            mode = "max" if cfg.monitor == "val_auroc" else "min"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.3, patience=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": cfg.monitor}}
        return opt


class EpochTable(Callback):
    """Collects one row of metrics per epoch across both phases; writes metrics.csv atomically."""

    COLUMNS = ["phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auroc", "lr"]

    def __init__(self, path: Path, rows: list[dict[str, Any]], phase: str) -> None:
        self.path, self.rows, self.phase = path, rows, phase

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k in self.COLUMNS}
        lr = trainer.optimizers[0].param_groups[-1]["lr"] if trainer.optimizers else float("nan")
        self.rows.append({"phase": self.phase, "epoch": len(self.rows), **m, "lr": lr})
        self.write()

    def write(self) -> None:
        lines = [",".join(self.COLUMNS)]
        for r in self.rows:
            lines.append(",".join(str(r.get(c, "")) for c in self.COLUMNS))
        write_text(self.path, "\n".join(lines) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows[:] = [dict(r) for r in state_dict.get("rows", [])]  # in place: the next phase shares the list


class EpochSeeding(Callback):
    """Reseeds Python, NumPy and torch at the start of every training epoch from (seed, phase,
    epoch, rank), so dropout in epoch k does not depend on the epochs before it (augmentation is
    seeded per image by :class:`~fracdet.data.loader.EpochShuffle`)."""

    def __init__(self, seed: int, phase: int) -> None:
        self.seed, self.phase = seed, phase

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import random

        import numpy as np

        s = epoch_seed(self.seed, 2, self.phase, trainer.current_epoch, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class ResumedAtEpochEnd(Callback):
    """Completes what a checkpoint written at an epoch's end misses when a run resumes from it:
    the epoch's ReduceLROnPlateau step (Lightning steps plateau schedulers after the checkpoint
    hook, other epoch schedulers before it), and an early stop decided in that epoch."""

    def __init__(self, monitor: str, rows: list[dict[str, Any]], resumed: bool) -> None:
        self.monitor, self.rows, self.resumed = monitor, rows, resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.resumed or trainer.current_epoch == 0:
            return
        early = trainer.early_stopping_callback
        if early is not None and (early.stopped_epoch > 0 or early.wait_count >= early.patience):
            trainer.should_stop = True
            return
        value = self.rows[-1].get(self.monitor) if self.rows else None
        for config in trainer.lr_scheduler_configs:
            if config.interval == "epoch" and config.reduce_on_plateau and value is not None:
                pl_module.lr_scheduler_step(config.scheduler, float(value))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, then renamed over it: a kill
    during the write leaves the previous checkpoint whole (Lightning's own local write is not)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


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


PHASES = ("head", "finetune")


def _trainer(cfg: TrainConfig, run_dir: Path, phase: str, epochs: int, rows: list[dict[str, Any]],
             log_version: str = "") -> L.Trainer:
    """The phase's Lightning trainer; ``log_version`` names a resumed session's own log folder
    (Lightning would delete the interrupted session's logs in the same one) and is given only
    when the phase resumes from its checkpoint."""
    mode = "max" if cfg.monitor == "val_auroc" else "min"
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename=f"{phase}-best", monitor=cfg.monitor, mode=mode,
        save_top_k=1, save_weights_only=True, enable_version_counter=False,
    )
    last = ModelCheckpoint(  # after the best one: its saved state includes this epoch's best
        dirpath=run_dir / "checkpoints", filename=f"{phase}-last", monitor=None, save_top_k=1,
        save_weights_only=False, enable_version_counter=False, save_on_train_epoch_end=True,
    )
    callbacks: list[Callback] = [
        ckpt,
        last,
        EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience),
        EpochTable(run_dir / "metrics.csv", rows, phase),
        EpochSeeding(cfg.seed, PHASES.index(phase)),
        ResumedAtEpochEnd(cfg.monitor, rows, resumed=bool(log_version)),
    ]
    if cfg.progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    callbacks.extend(EXTRA_CALLBACKS)
    loggers: list[Any] = [L.pytorch.loggers.CSVLogger(run_dir / "logs", name=phase, version=log_version)]
    try:
        loggers.append(L.pytorch.loggers.TensorBoardLogger(run_dir / "logs", name=f"tb-{phase}", version=log_version))
    except ModuleNotFoundError:
        pass
    quiet_lightning()  # in case logging was set up after this module was imported
    return L.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        # passed only when set: an explicit 1.0 makes Lightning announce "100% of the batches will be used"
        limit_train_batches=_limit(cfg.limit_train_batches),
        limit_val_batches=_limit(cfg.limit_val_batches),
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=False,
        default_root_dir=str(run_dir),
    )


def _limit(value: float | int | None) -> float | int | None:
    return None if value is None or value == 1.0 else value


def _load_best(module: FractureModule, trainer: L.Trainer) -> str:
    """Load the phase's best checkpoint into ``module``; returns its path ('' when none)."""
    ckpt = trainer.checkpoint_callback
    path = ckpt.best_model_path if ckpt else ""
    if path and not Path(path).is_file() and isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
        path = str(Path(ckpt.dirpath) / Path(path).name)  # a resumed run whose folder was moved
    if path and Path(path).is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        return path
    return ""


def _phase_done(label: str, cfg: TrainConfig, trainer: L.Trainer, best_path: str) -> None:
    """One line per phase end: epochs run, why it stopped, the best score and the checkpoint kept."""
    ran = int(trainer.current_epoch)
    early = trainer.early_stopping_callback
    why = (f"stopped early, no {cfg.monitor} improvement for {cfg.patience} epoch(s)"
           if early is not None and early.stopped_epoch > 0 else "all epochs run")
    ckpt = trainer.checkpoint_callback
    score = getattr(ckpt, "best_model_score", None)
    best = f"best {cfg.monitor} {float(score):.4f}" if score is not None else f"no {cfg.monitor} recorded"
    kept = f"restored {best_path}" if best_path else "no checkpoint to restore"
    log.info("%s done after %d epoch(s) (%s); %s; %s", label, ran, why, best, kept)


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

        train_loader = make_box_loader(train_s, build_train_transforms(spec, cfg.augment), training_boxes(cfg),
                                       cfg.batch_size, cfg.num_workers, cfg.cache_images, cfg.seed)
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
        trainer = _trainer(cfg, run_dir, phase, epochs, rows, log_version=version)
        if is_zero:
            if ckpt_path is not None:
                log.info("%s: resuming after epoch %d of %d from %s (training %s)", label, first_epoch, epochs,
                         ckpt_path, what)
            else:
                log.info("%s: training %s, up to %d epoch(s)", label, what, epochs)
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
        best_path = _load_best(module, trainer)
        if is_zero:
            _phase_done(label, cfg, trainer, best_path)
    if not is_zero:
        return TrainResult(run_dir, None, {})
    return _finish_run(cfg, ds, model, spec, run_dir, rows)


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


def _finish_run(cfg: TrainConfig, ds: Dataset, model: FracNet, spec: Any, run_dir: Path,
                rows: list[dict[str, Any]]) -> TrainResult:
    """Calibrate on validation, pick the threshold, evaluate, write figures and the artifact."""
    from fracdet.evaluate import write_evaluation
    from fracdet.modelcard import render_model_card
    from fracdet.plots import plot_training_curves
    from fracdet.models.collect import collect_logits

    model.eval()
    transform = build_transforms(spec)
    val_logits, val_y, _ = collect_logits(model, ds.by_split("val"), transform, cfg.batch_size)
    from fracdet.recalibrate import choose_calibration

    cal, how = choose_calibration(val_logits, val_y, getattr(cfg, "calibration", "auto"))
    temperature = cal["params"]["temperature"] if cal["method"] == "temperature" else 1.0
    val_prob = apply_calibration(val_logits, cal)
    ops = _operating_points(val_y, val_prob)
    threshold = ops.threshold
    metrics: dict[str, Any] = {
        "val": with_bootstrap_ci(binary_metrics(val_y, val_prob, threshold), val_y, val_prob, threshold),
        "calibration": {
            "temperature": temperature, "method": cal["method"], "chosen_by": how["chosen_by"],
            "oof_ece_before": how["oof_ece_before"], "oof_ece_after": how["oof_ece_after"],
            "val_ece_before": expected_calibration_error(calibrated_probability(val_logits, 1.0), val_y),
            "val_ece_after": expected_calibration_error(val_prob, val_y),
            "fitted_on": "the validation split",
        },
        "operating_points": {"rule": ops.rule, "achieved": ops.achieved},
    }
    test_s = ds.by_split("test")
    if test_s:
        test_logits, test_y, test_idx = collect_logits(model, test_s, transform, cfg.batch_size)
        test_prob = apply_calibration(test_logits, cal)
        info = {"architecture": cfg.model, "threshold_rule": ops.threshold_rule, "threshold_note": ops.note,
                "calibration": metrics["calibration"], "model": str(run_dir / "model.fracdet"),
                "fracdet_version": __version__}
        test_m = write_evaluation(run_dir / "eval-test", test_y, test_prob, threshold, ["not fractured", "fractured"],
                                  extra={"evaluated_on": "the test split", "model": info["model"]}, report=dict(
                                      doubt_threshold=ops.doubt_threshold, fracture_threshold=ops.fracture_threshold,
                                      logits=test_logits, temperature=temperature, calibration=cal,
                                      samples=[test_s[i] for i in test_idx], run_dir=run_dir if rows else None,
                                      model_info=info, title=f"fracdet {cfg.model}: test split"))
        metrics["test"] = {k: v for k, v in test_m.items() if k not in ("classification_report", "figures")}
    if rows:
        plot_training_curves(rows, run_dir / "curves.png")
    localisation: dict[str, Any] = {}
    if model.map_head is not None:
        from fracdet.boxtraining import fit_localisation

        localisation = fit_localisation(model, ds.by_split("val"), spec, training_boxes(cfg), cfg.batch_size)
        metrics["localisation"] = localisation
    art = ModelArtifact(
        architecture=cfg.model,
        state_dict=model.state_dict(),
        preprocess=spec,
        model_config=dict(model.config),
        threshold=threshold,
        threshold_rule=ops.threshold_rule,
        temperature=temperature,
        calibration=cal,
        doubt_threshold=ops.doubt_threshold,
        fracture_threshold=ops.fracture_threshold,
        threshold_note=ops.note,
        training={**cfg.to_dict(), "epochs_run": len(rows), "fracdet_version": __version__},
        data={**ds.summary(), "fingerprint": ds.fingerprint(), "split_file": "split.csv",
              **getattr(ds, "audit_summary", {})},
        metrics=metrics,
        split_csv=split_manifest(ds),
        localisation={k: v for k, v in localisation.items() if k in ("box_threshold", "chosen_on")},
    )
    artifact_path = save_artifact(art, run_dir / "model.fracdet")
    art = _add_ood(artifact_path, ds)
    if cfg.int8:
        art = _add_int8(artifact_path, ds)
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "model_card.md", render_model_card(art))
    return TrainResult(run_dir, artifact_path, metrics)


def _add_ood(artifact_path: Path, ds: Dataset) -> ModelArtifact:
    """Fit the saved artifact's out-of-distribution reference (train films; threshold on
    validation, :mod:`fracdet.ood_fit`) and save it again; without it only the image checks apply."""
    from fracdet.ood_fit import fit_artifact_ood

    art = load_artifact(artifact_path)
    try:
        fit_artifact_ood(art, [s.path for s in ds.by_split("train")], [s.path for s in ds.by_split("val")])
    except Exception as exc:  # the model is saved already; predict then applies the image checks only
        log.warning("OOD reference not added: %s: %s", type(exc).__name__, exc)
        return art
    save_artifact(art, artifact_path)
    return art


def _add_int8(artifact_path: Path, ds: Dataset) -> ModelArtifact:
    """Quantize the saved artifact (its float16-stored weights, as users get them) on training
    images, check it on validation, report on test, and save it again with the outcome."""
    from fracdet.inference.onnx import onnx_available
    from fracdet.quantize import quantize_artifact

    art = load_artifact(artifact_path)
    if not onnx_available():
        log.warning("int8 graph not added: onnxruntime is not installed")
        return art
    try:
        quantize_artifact(art, ds.by_split("train"), ds.by_split("val"), check_note="the validation split",
                          calibration_note="the training split (no augmentation)", test=ds.by_split("test"))
    except Exception as exc:  # an optional speed-up: the float model is already saved
        log.warning("int8 graph not added: %s: %s", type(exc).__name__, exc)
        return art
    save_artifact(art, artifact_path)
    return art


def _operating_points(y: Any, prob: Any) -> Any:
    """Youden's J main threshold plus doubt / fracture points on validation (0.5 for all three
    when the validation split lacks a class)."""
    from fracdet.operating import OperatingPoints, choose_operating_points

    if len(set(int(v) for v in y)) < 2:
        return OperatingPoints(0.5, "default 0.5 (the validation split lacks a class)", 0.5, 0.5,
                               note="The validation split lacks a class: default threshold 0.5, no doubt band.")
    return choose_operating_points(y, prob)


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
    return _finish_run(cfg, ds, model.to(memory_format=torch.channels_last), spec, run, rows)


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a run's metrics.csv back into rows (numbers as floats)."""
    with open(path, newline="") as f:
        out = []
        for r in csv.DictReader(f):
            out.append({k: (r[k] if k == "phase" else (float(r[k]) if r[k] not in ("", None) else None)) for k in r})
        return out


__all__ = ["AugmentConfig", "FractureModule", "TrainConfig", "TrainResult", "prepare_data", "resume", "train"]
