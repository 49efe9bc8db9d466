"""The Lightning side of training: the fracture module (loss, metrics, optimizers), the
per-epoch callbacks (metrics table, reseeding, resumed-epoch completion), atomic checkpoints
and one phase's trainer.  :mod:`fracdet.train` runs the phases with them."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fracdet.config import TrainConfig
from fracdet.data.loader import epoch_seed
from fracdet.fsutil import atomic_path, write_text
from fracdet.logsetup import quiet_lightning
from fracdet.models import FracNet

quiet_lightning()  # Lightning's import gave its logger a console handler of its own: each line came twice
log = logging.getLogger(__name__)
EXTRA_CALLBACKS: list[Callback] = []  # added to every phase's trainer while listed (fracdet tune's pruning)

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
        if len(batch) >= 5 and self.model.map_head is not None:  # box masks: + λ · map loss
            from fracdet.models.maploss import centre_loss, map_loss

            out = self.model.graph_outputs(x.contiguous(memory_format=torch.channels_last))
            logits = out["logit"]
            loss = self._loss(logits, y) + self.cfg.map_weight * map_loss(out["fracture_map"], batch[3], batch[4])
            if len(batch) == 8 and "box_map" in out:  # + λ_box · centre loss, films with a box target only
                keep = batch[4] > 0
                if bool(keep.any()):
                    loss = loss + self.cfg.box_weight * centre_loss(out["box_map"][keep], batch[5][keep],
                                                                    batch[6][keep], batch[7][keep],
                                                                    box_loss=self.cfg.box_loss)
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



PHASES = ("head", "finetune")


def build_trainer(cfg: TrainConfig, run_dir: Path, phase: str, epochs: int, rows: list[dict[str, Any]],
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


def load_best(module: FractureModule, trainer: L.Trainer) -> str:
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


def log_phase_end(label: str, cfg: TrainConfig, trainer: L.Trainer, best_path: str) -> None:
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



__all__ = ["EXTRA_CALLBACKS", "PHASES", "AtomicCheckpointIO", "EpochSeeding", "EpochTable", "FractureModule",
           "ResumedAtEpochEnd", "build_trainer", "load_best", "log_phase_end"]
