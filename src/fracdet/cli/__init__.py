"""``fracdet`` command line: one module per command (``fracdet.cli.<command>``), thin over the
library.  Heavy imports are deferred into each command so ``fracdet --help`` starts fast.
Errors print one line, no traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

from fracdet import __version__
from fracdet.cli.audit import add_audit, add_split
from fracdet.cli.clinical import add_calibrate, add_ensemble
from fracdet.cli.compare import add_compare
from fracdet.cli.cv import add_cv
from fracdet.cli.evaluate import add_evaluate
from fracdet.cli.explain import add_explain
from fracdet.cli.fitood import add_fit_ood
from fracdet.cli.info import add_info, add_models
from fracdet.cli.predict import add_predict
from fracdet.cli.quantize import add_quantize
from fracdet.cli.train import add_train
from fracdet.cli.tune import add_tune
from fracdet.cli.upgrade import add_upgrade
from fracdet.cli.records import add_records
from fracdet.cli.serve import add_serve
from fracdet.cli.dicomnode import add_dicomnode

log = logging.getLogger("fracdet")
EXTRA_MODULES = {name: "train" for name in ("torch", "torchvision", "timm", "lightning", "torchmetrics", "sklearn",
                                            "matplotlib", "scipy", "onnx", "pytorch_grad_cam", "tensorboard")}
EXTRA_MODULES.update({"pydicom": "dicom", "pylibjpeg": "dicom", "fastapi": "serve", "uvicorn": "serve",
                      "sqlalchemy": "serve", "alembic": "serve", "ray": "ray", "pyarrow": "ray",
                      "pynetdicom": "dicomnode", "highdicom": "dicomnode"})
"""Third-party modules of the optional extras, and the extra that brings each."""


def _setup_logging(verbose: int) -> None:
    """One line per event: fracdet's INFO, third-party warnings once, no Lightning chatter
    (``-v`` shows third-party INFO, ``-vv`` debug and dependencies' deprecations); see logsetup."""
    from fracdet.logsetup import configure

    configure(verbose)


COMMANDS: list[Callable[[Any], None]] = [add_train, add_cv, add_tune, add_evaluate, add_compare, add_predict, add_explain, add_audit, add_split,
                                         add_calibrate, add_ensemble, add_quantize, add_fit_ood, add_upgrade, add_models, add_info,
                                         add_serve, add_records, add_dicomnode]


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
    """Entry point of the ``fracdet`` console script.

    Every failure is one line on stderr and exit status 2: ``error: <file>: <reason>`` for
    fracdet's own errors, ``error: <command>: <Type>: <reason>`` for anything unexpected.
    ``--debug`` (anywhere on the line) or ``FRACDET_DEBUG=1`` also prints the traceback."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list or os.environ.get("FRACDET_DEBUG", "") not in ("", "0")
    args_list = [a for a in args_list if a != "--debug"]
    parser = build_parser()
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (also FRACDET_DEBUG=1)")
    args = parser.parse_args(args_list)
    _setup_logging(args.verbose)
    from fracdet.errors import FracdetError

    def fail(line: str) -> int:
        if debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"error: {' '.join(line.splitlines())}", file=sys.stderr)
        return 2

    try:
        return int(args.func(args) or 0)
    except FracdetError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # a light install (no `train` extra) asked for training-side work
        missing = (exc.name or "").split(".")[0]
        extra = EXTRA_MODULES.get(missing)
        if extra:
            return fail(f"fracdet {args.command} needs {missing}, which this install lacks: "
                        f"pip install 'fracdet[{extra}]'")
        return fail(f"fracdet {args.command}: {exc}")
    except OSError as exc:
        if exc.filename is not None and exc.strerror:
            return fail(f"{exc.filename}: {exc.strerror}")
        return fail(str(exc) or type(exc).__name__)
    except ValueError as exc:
        return fail(str(exc) or type(exc).__name__)
    except Exception as exc:  # a bug or a library failure: still one line, the traceback on request
        reason = " ".join(str(exc).split()) or "(no message)"
        hint = "" if debug else " (--debug shows the traceback)"
        return fail(f"fracdet {args.command}: {type(exc).__name__}: {reason}{hint}")


def entry() -> int:
    """The console script: switch to the fast allocator when available, then run."""
    from fracdet.runtime import reexec_with_tcmalloc

    reexec_with_tcmalloc(sys.argv[1:])
    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
