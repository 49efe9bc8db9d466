"""Writing prediction rows (CSV/JSON, atomically) and progress bars for long batches."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from fracdet.fsutil import write_text

T = TypeVar("T")
COLUMNS = ["path", "probability", "label", "verdict", "threshold", "logit", "error"]
STUDY_COLUMNS = ["level", "study"]
"""Leading columns of ``--by-study`` CSVs (a study row, then its ``view`` rows)."""
EXTRA_COLUMNS = ["n_views", "aggregation", "frame", "modality", "body_part", "view",
                 "study_uid", "series_uid", "sop_uid"]
"""Written after :data:`COLUMNS` when any row has them (DICOM inputs, study rows)."""


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`COLUMNS`, preceded by the study columns and followed by the extra columns
    that occur in ``rows`` (plain images give exactly :data:`COLUMNS`)."""
    present = set().union(*rows) if rows else set()
    lead = [c for c in STUDY_COLUMNS if c in present]
    tail = [c for c in EXTRA_COLUMNS if c in present]
    return lead + COLUMNS + tail


class PredictionWriter:
    """Collects rows and writes them as CSV or JSON (by extension) when the block ends.

    ``add`` takes a prediction (``to_row()``) or a study result (``to_rows()`` for the
    CSV, ``to_json()`` nested for JSON)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.rows: list[dict[str, Any]] = []
        self.json_rows: list[dict[str, Any]] = []
        if self.path and self.path.suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"{self.path}: --out must end in .csv or .json")

    def __enter__(self) -> "PredictionWriter":
        return self

    def add(self, pred: Any) -> None:
        if hasattr(pred, "to_rows"):
            self.rows.extend(pred.to_rows())
            self.json_rows.append(pred.to_json())
        else:
            row = pred.to_row()
            self.rows.append(row)
            self.json_rows.append(row)

    def __exit__(self, *exc: Any) -> None:
        if self.path is None:
            return
        if self.path.suffix.lower() == ".json":
            write_text(self.path, json.dumps(self.json_rows, indent=2) + "\n")
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=csv_columns(self.rows), extrasaction="ignore")
        w.writeheader()
        w.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def progress_over(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield items while showing a rich progress bar on a terminal (nothing otherwise)."""
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(description), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
