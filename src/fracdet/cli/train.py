"""``fracdet train``: two-phase training into a run folder with the model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fracdet.cli.options import add_layout_option

def add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a classifier (two phases) and write a run folder with the model")
    p.add_argument("data", nargs="?", help="dataset: split folders, class folders, a CSV manifest or FracAtlas")
    add_layout_option(p)
    p.add_argument("--config", metavar="FILE",
                   help="training options from a JSON or YAML file (e.g. `fracdet tune`'s best.json); flags override it")
    p.add_argument("--out", default="", help="run folder (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--model", default=None, help="architecture (see `fracdet models`)")
    p.add_argument("--no-pretrained", action="store_true", help="train from scratch on purpose")
    p.add_argument("--weights", help="backbone weights to start from: a local timm state dict (e.g. ImageNet's), "
                   "or a fracdet model file of the same architecture (its fine-tuned backbone)")
    p.add_argument("--resplit", action="store_true", help="merge the given splits and re-split group-aware 70/15/15")
    p.add_argument("--no-int8", action="store_true",
                   help="do not add the int8 onnxruntime graph (quantized on training images, checked on val)")
    p.add_argument("--allow-leakage", action="store_true",
                   help="train even if the given splits share duplicates or labels conflict (the model card says so)")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs1", dest="phase1_epochs", type=int, help="phase 1 (frozen backbone) epochs")
    p.add_argument("--epochs2", dest="phase2_epochs", type=int, help="phase 2 (fine-tuning) epochs")
    p.add_argument("--head-lr", type=float)
    p.add_argument("--backbone-lr", type=float)
    p.add_argument("--phase2-head-lr", type=float)
    p.add_argument("--unfreeze-from", help="stage name to unfreeze from in phase 2 (default: all)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--scheduler", choices=["plateau", "cosine", "none"])
    p.add_argument("--monitor", choices=["val_auroc", "val_loss"])
    p.add_argument("--patience", type=int)
    p.add_argument("--no-class-weighting", action="store_true")
    p.add_argument("--calibration", choices=["auto", "temperature", "platt", "beta", "isotonic"],
                   help="probability calibration fitted on validation (default auto: the best out-of-fold method)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--input-size", type=int)
    p.add_argument("--head-hidden", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--no-augment", action="store_true", help="switch all augmentation off")
    p.add_argument("--rotation", type=float, help="augmentation: max rotation in degrees (0 = off)")
    p.add_argument("--translate", type=float)
    p.add_argument("--zoom", type=float)
    p.add_argument("--no-hflip", action="store_true")
    p.add_argument("--brightness", type=float)
    p.add_argument("--contrast", type=float)
    p.add_argument("--blur-p", type=float)
    p.add_argument("--erasing-p", type=float)
    p.add_argument("--noise", type=float, help="augmentation: max std of Gaussian pixel noise, [0, 1] units (0 = off)")
    p.add_argument("--noise-p", type=float, help="augmentation: probability of pixel noise")
    p.add_argument("--map-weight", type=float,
                   help="learn a fracture map from boxes: λ of the per-cell map loss beside the image loss (0 = off)")
    p.add_argument("--boxes", metavar="COCO_JSON",
                   help="fracture boxes for --map-weight (default: DATA/annotations/fracture_boxes_coco.json)")
    p.add_argument("--map-stride", type=int, choices=[8, 16, 32],
                   help="map head resolution (default 16 where possible; 8 adds the stride-8 stage)")
    p.add_argument("--map-fuse", type=float, help="image logit = (1 - a)·head + a·max(map) (default 0)")
    p.add_argument("--box-weight", type=float,
                   help="also learn fracture boxes: λ of a box head's centre loss (CenterNet) beside the map "
                        "loss (0 = off; needs --map-weight)")
    p.add_argument("--box-stride", type=int, choices=[8, 16], help="box head resolution (default 16; 8 adds the "
                                                                      "stride-8 stage)")
    p.add_argument("--box-loss", choices=["l1", "giou"],
                   help="box regression: l1 on offset and log size (default, CenterNet) or giou of the decoded box")
    p.add_argument("--box-dense", type=float, metavar="G",
                   help="also regress each box at the cells around its centre where its Gaussian is >= G "
                        "(TTFNet; default 0: the centre cell only)")
    p.add_argument("--accelerator", help="lightning accelerator: auto, cpu, gpu, ...")
    p.add_argument("--devices", help="lightning devices: auto, 1, 2, ...")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--strategy", help="lightning strategy: auto, ddp, ...")
    p.add_argument("--precision")
    p.add_argument("--limit-train-batches", type=float, help=argparse.SUPPRESS)
    p.add_argument("--limit-val-batches", type=float, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--refinish", metavar="RUN_DIR",
                   help="no training: redo calibration, operating points, evaluation and the artifact of RUN_DIR "
                        "from its config and best checkpoint (after an interruption or a fracdet upgrade)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR with its saved config and split: finished phases "
                        "are skipped, the unfinished one goes on after its last completed epoch "
                        "(checkpoints/<phase>-last.ckpt, written each epoch), ending as an uninterrupted run would")
    p.set_defaults(func=_cmd_train)


def _cmd_train(a: argparse.Namespace) -> int:
    from fracdet.errors import FracdetError
    from fracdet.train import refinish, resume, train

    if a.refinish and a.resume:
        raise FracdetError("fracdet train: --refinish and --resume are two different things; give one")
    if a.refinish:
        _print_run_summary(refinish(a.refinish))
        return 0
    if a.resume:
        if a.data:
            raise FracdetError("fracdet train --resume: the run's saved config names the data; give no DATA")
        result = resume(a.resume, progress=not a.no_progress and sys.stderr.isatty())
        if result.artifact_path is not None:
            _print_run_summary(result)
        return 0
    if not a.data:
        raise FracdetError("fracdet train: give the DATA to train on (or --resume / --refinish RUN_DIR)")

    cfg = config_from_args(a)
    result = train(cfg)
    if result.artifact_path is None:
        return 0  # a DDP worker rank: rank 0 reports
    _print_run_summary(result)
    return 0


def train_parser() -> argparse.ArgumentParser:
    """The ``fracdet train`` parser on its own, as a parent for commands that take the same
    training options (``fracdet cv``, ``fracdet tune``)."""
    holder = argparse.ArgumentParser(add_help=False)
    sub = holder.add_subparsers()
    add_train(sub)
    return sub.choices["train"]


def workflow_config(a: argparse.Namespace, command: str, verb: str, resume_note: str = "") -> Any:
    """The training configuration of a workflow built on ``fracdet train``'s options
    (``fracdet cv``, ``fracdet tune``): DATA is required, ``--refinish``/``--resume`` refused."""
    from fracdet.errors import FracdetError

    if getattr(a, "refinish", None) or getattr(a, "resume", None):
        raise FracdetError(f"fracdet {command}: --refinish and --resume belong to fracdet train{resume_note}")
    if not a.data:
        raise FracdetError(f"fracdet {command}: give the DATA to {verb} on")
    return config_from_args(a)


def config_from_args(a: argparse.Namespace) -> Any:
    """The :class:`~fracdet.config.TrainConfig` of parsed ``fracdet train`` options (also used by
    ``fracdet cv`` and ``fracdet tune``): the ``--config`` file's options, or the defaults, then
    every flag given on the command line on top."""
    from fracdet.config import TrainConfig, read_config_file

    cfg = TrainConfig.from_dict(read_config_file(a.config)) if getattr(a, "config", None) else TrainConfig()
    cfg.data = a.data or cfg.data
    cfg.out = a.out or cfg.out
    if a.layout != "auto":
        cfg.layout = a.layout
    for name in ("model", "seed", "phase1_epochs", "phase2_epochs", "head_lr", "backbone_lr", "phase2_head_lr",
                 "unfreeze_from", "optimizer", "weight_decay", "scheduler", "monitor", "patience", "batch_size",
                 "input_size", "head_hidden", "dropout", "num_workers", "accelerator", "devices", "num_nodes",
                 "strategy", "precision", "limit_train_batches", "limit_val_batches", "weights",
                 "map_weight", "boxes", "map_stride", "map_fuse", "box_weight", "box_stride", "box_loss",
                 "box_dense", "calibration"):
        if getattr(a, name, None) is not None:
            setattr(cfg, name, getattr(a, name))
    for flag, field, value in (("no_pretrained", "pretrained", False), ("resplit", "resplit", True),
                               ("allow_leakage", "allow_leakage", True), ("no_int8", "int8", False),
                               ("no_class_weighting", "class_weighting", False)):
        if getattr(a, flag, False):
            setattr(cfg, field, value)
    cfg.progress = not a.no_progress and sys.stderr.isatty()
    aug = cfg.augment
    if a.no_augment:
        aug.enabled = False
    if a.no_hflip:
        aug.hflip = False
    for name in ("rotation", "translate", "zoom", "brightness", "contrast", "blur_p", "erasing_p", "noise", "noise_p"):
        if getattr(a, name) is not None:
            setattr(aug, name, getattr(a, name))
    return cfg


def _print_run_summary(result: Any) -> None:
    from rich.console import Console

    con = Console()
    m = result.metrics
    con.print(f"[bold]run folder[/]: {result.run_dir}")
    con.print(f"[bold]model[/]: {result.artifact_path}")
    for split in ("val", "test"):
        if split in m:
            s = m[split]
            con.print(f"{split:>4}: AUROC {s['roc_auc']:.3f}  sensitivity {s['sensitivity']:.3f}  "
                      f"specificity {s['specificity']:.3f}  (n={s['n']}, threshold {s['threshold']:.3f})")


