"""``fracdet`` command line: thin subcommands over the library.  Heavy imports are deferred
into each command so ``fracdet --help`` starts fast.  Errors print one line, no traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

from fracdet.cli_options import add_backend_option, add_layout_option, add_model_option

from fracdet import __version__
from fracdet.cli_audit import add_audit, add_split
from fracdet.cli_clinical import add_calibrate, add_ensemble
from fracdet.cli_explain import add_explain
from fracdet.cli_quantize import add_quantize
from fracdet.cli_predict import add_predict
from fracdet.cli_upgrade import add_upgrade

log = logging.getLogger("fracdet")
def _setup_logging(verbose: int) -> None:
    """One line per event: fracdet's INFO, third-party warnings once, no Lightning chatter
    (``-v`` shows third-party INFO, ``-vv`` debug and dependencies' deprecations); see logsetup."""
    from fracdet.logsetup import configure

    configure(verbose)


# ---------------------------------------------------------------- train
def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a classifier (two phases) and write a run folder with the model")
    p.add_argument("data", nargs="?", help="dataset: split folders, class folders, a CSV manifest or FracAtlas")
    add_layout_option(p)
    p.add_argument("--out", default="", help="run folder (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--model", default=None, help="architecture (see `fracdet models`)")
    p.add_argument("--no-pretrained", action="store_true", help="train from scratch on purpose")
    p.add_argument("--weights", help="local ImageNet weights (timm state dict) for the backbone")
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
    p.set_defaults(func=_cmd_train)


def _cmd_train(a: argparse.Namespace) -> int:
    from fracdet.config import TrainConfig
    from fracdet.errors import FracdetError
    from fracdet.train import refinish, train

    if a.refinish:
        _print_run_summary(refinish(a.refinish))
        return 0
    if not a.data:
        raise FracdetError("fracdet train: give the DATA to train on (or --refinish RUN_DIR)")

    cfg = TrainConfig(data=a.data, layout=a.layout, out=a.out)
    for name in ("model", "seed", "phase1_epochs", "phase2_epochs", "head_lr", "backbone_lr", "phase2_head_lr",
                 "unfreeze_from", "optimizer", "weight_decay", "scheduler", "monitor", "patience", "batch_size",
                 "input_size", "head_hidden", "dropout", "num_workers", "accelerator", "devices", "num_nodes",
                 "strategy", "precision", "limit_train_batches", "limit_val_batches", "weights"):
        if getattr(a, name) is not None:
            setattr(cfg, name, getattr(a, name))
    cfg.pretrained = not a.no_pretrained
    cfg.resplit = a.resplit
    cfg.allow_leakage = a.allow_leakage
    cfg.int8 = not a.no_int8
    cfg.class_weighting = not a.no_class_weighting
    cfg.progress = not a.no_progress and sys.stderr.isatty()
    aug = cfg.augment
    aug.enabled = not a.no_augment
    aug.hflip = not a.no_hflip
    for name in ("rotation", "translate", "zoom", "brightness", "contrast", "blur_p", "erasing_p", "noise", "noise_p"):
        if getattr(a, name) is not None:
            setattr(aug, name, getattr(a, name))
    result = train(cfg)
    if result.artifact_path is None:
        return 0  # a DDP worker rank: rank 0 reports
    _print_run_summary(result)
    return 0


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


# ---------------------------------------------------------------- evaluate
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="clinical metrics of a model on labelled data (JSON, table, ROC, confusion)")
    p.add_argument("data")
    add_model_option(p)
    p.add_argument("--out", default="evaluation", help="output folder (default ./evaluation)")
    p.add_argument("--split", default="auto", help="auto (test split), train, val, test or all")
    add_layout_option(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dedupe-against", metavar="TRAIN_DATA",
                   help="drop test images that duplicate or near-duplicate these training images; report both ways")
    p.add_argument("--boxes", metavar="COCO_JSON",
                   help="fracture boxes (COCO): score where the heatmaps point on the fractured images that "
                   "have boxes (pointing game, energy in box, IoU) against centre and bone baselines")
    p.add_argument("--cam-methods", default="gradcam,gradcam++,eigencam",
                   help="comma-separated CAM methods scored with --boxes (default gradcam,gradcam++,eigencam)")
    c = p.add_argument_group("clinical report")
    c.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the image, its mirror and ±10° rotations (4× slower)")
    add_backend_option(c, help="inference engine, as for predict (default auto: what predict uses)")
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="stratified bootstrap resamples for the 95%% confidence intervals (default 1000)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--run", metavar="RUN_DIR", help="training run folder: its training curves go into the report")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from fracdet.evaluate import evaluate

    r = evaluate(a.data, a.model, out_dir=a.out, split=a.split, layout=a.layout, batch_size=a.batch_size,
                 dedupe_against=a.dedupe_against, boxes=a.boxes,
                 cam_methods=[m for m in a.cam_methods.split(",") if m.strip()], tta=a.tta,
                 n_resamples=a.bootstrap, seed=a.seed, run_dir=a.run, backend=a.backend)
    print(f"evaluated on {r.split_note}\n")
    print(r.table)
    if "ci" in r.metrics:
        from fracdet.metrics import format_ci

        print("\n" + format_ci(r.metrics["ci"]))
    print(f"\n{r.metrics['classification_report']}")
    dd = r.metrics.get("deduped")
    if dd is not None:
        print(f"deduplicated against {a.dedupe_against}: {dd['dropped']} of {dd['dropped'] + dd['n']} test image(s) "
              f"duplicate training images")
        for k in ("roc_auc", "accuracy", "sensitivity", "specificity"):
            print(f"  {k:<12} all {r.metrics.get(k, float('nan')):.3f}   deduplicated {dd.get(k, float('nan')):.3f}")
    if "localisation" in r.metrics:
        from fracdet.localisation import format_localisation

        print(f"\nlocalisation against {a.boxes} (fractured images with boxes):\n"
              f"{format_localisation(r.metrics['localisation'])}\n"
              f"example overlays: {r.out_dir}/localisation/examples/")
    print(f"written: {r.out_dir}/report.html, metrics.json, metrics.txt, predictions.csv and the figures")
    return 0


# ---------------------------------------------------------------- models / info
def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the registered architectures and whether ImageNet weights are available offline")
    p.set_defaults(func=_cmd_models)


def _cmd_models(a: argparse.Namespace) -> int:
    from fracdet.models import get_spec, list_models
    from fracdet.models.weights import pretrained_available

    for name in list_models():
        spec = get_spec(name)
        avail = "yes" if pretrained_available(name) else "no (use --weights FILE or --no-pretrained)"
        print(f"{name:<20} input {spec.input_size:>3}  ImageNet weights offline: {avail}")
    return 0


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a model artifact and the runtime")
    add_model_option(p)
    p.set_defaults(func=_cmd_info)


def _cmd_info(a: argparse.Namespace) -> int:
    import json

    import torch

    from fracdet.artifact import default_model_path, load_artifact

    art = load_artifact(a.model)
    d = art.describe()
    d.pop("training", None)
    print(json.dumps({"model": str(a.model or default_model_path()), **d}, indent=2, default=str))
    from fracdet.runtime import active_allocator

    from fracdet.inference import choose_backend

    print(f"fracdet {__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"allocator {active_allocator()}, inference backend (auto) {choose_backend('auto', art)}")
    if art.int8_onnx:
        from fracdet.inference.backends import int8_decision

        print(f"int8 graph: {int8_decision(art.int8)[1]}")
    return 0


COMMANDS: list[Callable[[Any], None]] = [_add_train, _add_evaluate, add_predict, add_explain, add_audit, add_split,
                                         add_calibrate, add_ensemble, add_quantize, add_upgrade, _add_models, _add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fracdet",
        description="Fracture detection on bone radiographs: train, evaluate, predict. "
                    "A research tool, not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"fracdet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fracdet`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from fracdet.errors import FracdetError

    try:
        return int(args.func(args) or 0)
    except FracdetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        if os.environ.get("FRACDET_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def entry() -> int:
    """The console script: switch to the fast allocator when available, then run."""
    from fracdet.runtime import reexec_with_tcmalloc

    reexec_with_tcmalloc(sys.argv[1:])
    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
