"""What a Ray batch writes under ``--out DIR``:

- ``DIR/predictions/*.parquet``: shards, one row per image (per DICOM frame), with the columns
  of ``fracdet predict`` (:data:`SHARD_COLUMNS`: :data:`~fracdet.inference.prediction.COLUMNS`
  then the DICOM keys); a file that could not be read is a row with ``error`` set;
- ``DIR/predictions.csv`` with ``--csv`` (sorted by path, then frame);
- ``DIR/studies.parquet`` (and ``studies.csv`` with ``--csv``) with ``--by-study``: the second
  step, the views grouped by StudyInstanceUID with the model's Decision, as ``--by-study`` does.

``--resume`` reads the paths already in the shards and skips them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

from fracdet.inference.prediction import COLUMNS, ROW_META_KEYS, STUDY_COLUMNS, Prediction

log = logging.getLogger(__name__)

SHARDS = "predictions"
SHARD_COLUMNS = COLUMNS + list(ROW_META_KEYS)
STUDY_FILE_COLUMNS = STUDY_COLUMNS + COLUMNS + ["n_views", "aggregation"] + list(ROW_META_KEYS)
_FLOATS = {"probability", "threshold", "logit"}
_INTS = {"frame", "n_views"}


def arrow_type(column: str) -> Any:
    import pyarrow as pa

    if column in _FLOATS:
        return pa.float64()
    if column in _INTS:
        return pa.int64()
    return pa.string()


def schema(columns: list[str]) -> Any:
    import pyarrow as pa

    return pa.schema([(c, arrow_type(c)) for c in columns])


def _cell(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _FLOATS:
        return float(value)
    if column in _INTS:
        return int(value)
    return str(value)


def rows_table(rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> Any:
    """Rows (``to_row()`` dicts) as an Arrow table with a fixed schema (missing keys are null)."""
    import pyarrow as pa

    columns = columns or SHARD_COLUMNS
    rows = list(rows)
    return pa.table({c: pa.array([_cell(c, r.get(c)) for r in rows], arrow_type(c)) for c in columns},
                    schema=schema(columns))


def shard_dir(out: Path) -> Path:
    return Path(out) / SHARDS


def shard_files(out: Path) -> list[Path]:
    d = shard_dir(out)
    return sorted(d.glob("*.parquet")) if d.is_dir() else []


def read_shards(out: Path) -> Any:
    """Every readable shard as one table; an unreadable shard (a write cut off by a failure) is
    renamed ``*.parquet.broken`` so that its inputs are predicted again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in shard_files(out):
        try:
            table = pq.read_table(f)
            for c in SHARD_COLUMNS:  # shards written before a column existed (e.g. reason, warning)
                if c not in table.column_names:
                    table = table.append_column(c, pa.nulls(len(table), arrow_type(c)))
            tables.append(table.select(SHARD_COLUMNS).cast(schema(SHARD_COLUMNS)))
        except Exception as exc:  # ArrowInvalid, OSError: a truncated file
            log.warning("%s: unreadable shard (%s); renamed, its inputs will be predicted again", f, exc)
            f.rename(f.with_name(f.name + ".broken"))
    if not tables:
        return schema(SHARD_COLUMNS).empty_table()
    return pa.concat_tables(tables)


def done_paths(out: Path) -> set[str]:
    """Inputs already in the output (``--resume``)."""
    return set(read_shards(out).column("path").to_pylist())


def sorted_rows(table: Any) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    rows.sort(key=lambda r: (r["path"] or "", r.get("frame") if r.get("frame") is not None else -1))
    return rows


def row_to_prediction(row: Mapping[str, Any]) -> Prediction:
    """A shard row back as a :class:`Prediction` (DICOM keys in ``meta``)."""
    meta = {k: row[k] for k in ROW_META_KEYS if row.get(k) is not None}
    return Prediction(path=row["path"], probability=row["probability"], label=row["label"],
                      threshold=row["threshold"], logit=row["logit"], error=row["error"], meta=meta,
                      verdict=row["verdict"], reason=row.get("reason"), warning=row.get("warning"))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The CSV of ``fracdet predict --out rows.csv`` (same writer, same columns)."""
    from fracdet.inference.writer import PredictionWriter

    with PredictionWriter(path) as writer:
        for r in rows:
            writer.add(row_to_prediction(r))


def write_studies(rows: list[dict[str, Any]], out: Path, decision: Any, aggregation: str = "max",
                  study_map: Mapping[str, str] | None = None, csv: bool = False) -> list[Any]:
    """The study step: group the views by StudyInstanceUID (else ``study_map``, else the file)
    and give each study the model's verdict (:func:`fracdet.inference.group_by_study`)."""
    import pyarrow.parquet as pq

    from fracdet.fsutil import atomic_path
    from fracdet.inference import group_by_study
    from fracdet.inference.writer import PredictionWriter

    studies = group_by_study([row_to_prediction(r) for r in rows], aggregation, study_map, decision)
    flat = [r for s in studies for r in s.to_rows()]
    with atomic_path(Path(out) / "studies.parquet") as tmp:
        pq.write_table(rows_table(flat, STUDY_FILE_COLUMNS), tmp)
    if csv:
        with PredictionWriter(Path(out) / "studies.csv") as writer:
            for s in studies:
                writer.add(s)
    return studies
