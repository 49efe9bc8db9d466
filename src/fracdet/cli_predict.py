"""``fracdet predict``: files or folders in, one row per image out (CSV/JSON), errors as rows."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence


def add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict files or folders (recursively)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--model", help="model artifact (.fracdet); default: the model shipped with fracdet")
    p.add_argument("--out", help="write rows to FILE (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a: argparse.Namespace) -> int:
    from fracdet.io.images import iter_image_files
    from fracdet.predict import load_model
    from fracdet.report_io import PredictionWriter, progress_over

    predictor = load_model(a.model)
    files = list(iter_image_files(a.paths))
    rows = []
    with PredictionWriter(a.out) as writer:
        stream = predictor.predict_paths(files, batch_size=a.batch_size)
        for pred in progress_over(stream, "predicting", total=len(files)):
            writer.add(pred)
            rows.append(pred)
    if not a.quiet:
        _print_predictions(rows)
    bad = sum(not r.ok for r in rows)
    if not rows:
        print("error: no image files found in " + ", ".join(a.paths), file=sys.stderr)
        return 2
    if bad:
        print(f"{bad} of {len(rows)} file(s) could not be read (see the error column)", file=sys.stderr)
    return 1 if bad else 0


def _print_predictions(rows: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("path", "probability", "label", "threshold", "error")
    for r in rows:
        prob = f"{r.probability:.3f}" if r.probability is not None else ""
        style = "red" if not r.ok else ("bold" if r.label == "fractured" else "")
        table.add_row(str(r.path), prob, r.label or "", f"{r.threshold:.3f}", r.error or "", style=style)
    Console(width=max(120, len(max((str(r.path) for r in rows), key=len, default="")) + 60)).print(table)
