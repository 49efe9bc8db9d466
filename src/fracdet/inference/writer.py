"""The one writer of prediction rows: CSV or JSON (by extension), written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from fracdet.fsutil import write_text
from fracdet.inference.prediction import COLUMNS, EXTRA_COLUMNS, STUDY_COLUMNS


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
