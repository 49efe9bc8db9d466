"""The one writer of prediction rows: CSV or JSON (by extension), written atomically.

A CSV is written as the rows come: each row goes to ``OUT.partial`` beside ``OUT`` and is
flushed at once, and ``OUT`` itself is replaced (atomically) only when all rows are in. A run
that is killed leaves ``OUT.partial`` with every row up to the kill; ``resume=True`` keeps those
rows (a half-written last line and the last file's rows, which may lack frames, are dropped),
tells the caller which files are done (:attr:`PredictionWriter.finished`) and appends the rest.
JSON is written once at the end (``resume`` needs a CSV).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, TextIO

from fracdet.errors import FracdetError
from fracdet.fsutil import write_text
from fracdet.inference.prediction import COLUMNS, EXTRA_COLUMNS, STUDY_COLUMNS

log = logging.getLogger(__name__)
JOURNAL_COLUMNS = STUDY_COLUMNS + COLUMNS + EXTRA_COLUMNS
"""The columns of ``OUT.partial``: every column a row may have (the final CSV keeps those in use)."""


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`COLUMNS`, preceded by the study columns and followed by the extra columns
    that occur in ``rows`` (plain images give exactly :data:`COLUMNS`)."""
    present = set().union(*rows) if rows else set()
    lead = [c for c in STUDY_COLUMNS if c in present]
    tail = [c for c in EXTRA_COLUMNS if c in present]
    return lead + COLUMNS + tail


def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A row as CSV cells: ``boxes`` (a list of ``[x0, y0, x1, y1, score]``) as JSON."""
    return {k: (json.dumps(v) if k == "boxes" and v is not None else v) for k, v in row.items()}


def partial_path(out: str | Path) -> Path:
    """Where the rows of a CSV being written go until it is complete: ``OUT.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def read_complete_rows(path: Path, drop_last_file: bool = False) -> list[dict[str, str]]:
    """The whole rows of a prediction CSV that may end in a half-written line; with
    ``drop_last_file`` also without the rows of its last file (a multi-frame file may be cut)."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise FracdetError(f"{path}: cannot read the rows written so far ({type(exc).__name__})") from None
    text = text[: text.rfind("\n") + 1]  # a line cut by the kill has no newline yet
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return []
    if "path" not in header:
        raise FracdetError(f"{path}: not a fracdet prediction CSV (no 'path' column); cannot resume from it")
    rows = []
    try:
        for record in reader:
            if len(record) != len(header):  # cut inside a quoted field that held a newline
                break
            rows.append(dict(zip(header, record)))
    except csv.Error:  # an open quote at the end: the last record was cut
        pass
    if drop_last_file and rows:
        last = rows[-1]["path"]
        while rows and rows[-1]["path"] == last:
            rows.pop()
    return rows


class PredictionWriter:
    """Writes rows as CSV (as they come, see the module) or JSON (when the block ends).

    ``add`` takes a prediction (``to_row()``) or a study result (``to_rows()`` for the
    CSV, ``to_json()`` nested for JSON). ``resume=True`` (CSV only) continues the rows of an
    interrupted run (``OUT.partial``) or of a finished ``OUT``; :attr:`finished` holds the
    paths already there and :attr:`kept` their row count."""

    def __init__(self, path: str | Path | None, resume: bool = False) -> None:
        self.path = Path(path) if path else None
        self.json_rows: list[dict[str, Any]] = []
        self.finished: set[str] = set()
        self.kept = 0
        self._keys: set[str] = set()  # the columns the rows have (the final CSV keeps those)
        self._fh: TextIO | None = None
        self._csv: Any = None
        if self.path and self.path.suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"{self.path}: --out must end in .csv or .json")
        is_csv = self.path is not None and self.path.suffix.lower() == ".csv"
        if resume and not is_csv:
            raise FracdetError(f"{self.path or 'no --out'}: --resume continues a .csv --out (JSON is written at "
                               "the end, so an interrupted run leaves none to continue)")
        if is_csv:
            self._start(resume)

    def _start(self, resume: bool) -> None:
        assert self.path is not None
        journal = partial_path(self.path)
        kept: list[dict[str, str]] = []
        if resume and journal.is_file():
            kept = read_complete_rows(journal, drop_last_file=True)
        elif resume and self.path.is_file():
            kept = read_complete_rows(self.path)
        self.finished = {r["path"] for r in kept}
        self.kept = len(kept)
        self._keys = {k for r in kept for k, v in r.items() if v != ""}
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=JOURNAL_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(kept)
        write_text(journal, buf.getvalue())  # the kept rows, whole, before anything is appended
        self._fh = open(journal, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._fh, fieldnames=JOURNAL_COLUMNS, extrasaction="ignore")
        if resume:
            log.info("resuming %s: %d row(s) of %d file(s) already written", self.path, self.kept, len(self.finished))

    def __enter__(self) -> "PredictionWriter":
        return self

    def add(self, pred: Any) -> None:
        rows = pred.to_rows() if hasattr(pred, "to_rows") else [pred.to_row()]
        if self._csv is not None:
            self._keys.update(*rows)
            self._csv.writerows(csv_cells(r) for r in rows)
            assert self._fh is not None
            self._fh.flush()  # whole rows reach the file as they come: a kill loses only the current one
        elif self.path is not None:
            self.json_rows.append(pred.to_json() if hasattr(pred, "to_rows") else rows[0])

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.path is None:
            return
        if self._fh is None:
            if exc_type is None:
                write_text(self.path, json.dumps(self.json_rows, indent=2) + "\n")
            return
        self._fh.close()
        journal = partial_path(self.path)
        if exc_type is not None:
            log.warning("interrupted: the rows written so far are in %s (--resume continues them)", journal)
            return
        rows = read_complete_rows(journal)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=csv_columns([dict.fromkeys(self._keys)]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text(self.path, buf.getvalue())
        journal.unlink(missing_ok=True)
