"""The record of every reading: one row per prediction served (time, input SHA-256, DICOM UIDs,
model name + artifact SHA-256, probability, label, verdict, thresholds — never pixels) and the
readers' own verdicts on them (feedback), in a SQL database through SQLAlchemy 2.

The schema is created and kept current by the Alembic migrations in
``fracdet/serve/migrations``, applied programmatically (:func:`upgrade`) whenever a store is
opened, so a new database needs no set-up.  ``sqlite:///records.sqlite`` (one file) is the
default; ``postgresql://user@host/db`` works too (driven by psycopg 3).

``fracdet predict --record`` and the API both call :func:`record_predictions` /
:meth:`RecordStore.add_predictions`; ``fracdet records export`` turns the readers' verdicts into
a labelled CSV manifest (:func:`export_feedback`), ``fracdet records stats`` measures how often
the model agrees with the readers (:func:`agreement_stats`)."""

from __future__ import annotations

import csv
import datetime as _dt
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy import (Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Text, create_engine,
                        select)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from fracdet.errors import FracdetError
from fracdet.fsutil import sha256_of_file

MIGRATIONS = Path(__file__).parent / "migrations"
FRACTURED, NOT_FRACTURED = "fractured", "not fractured"


class Base(DeclarativeBase):
    metadata = MetaData()


class PredictionRecord(Base):
    """One prediction served: what was read, by which model, with which result."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16))  # api, cli
    file_name: Mapped[str | None] = mapped_column(String(255))  # as the client named it (data only)
    source_path: Mapped[str | None] = mapped_column(Text)  # the file's path, when known (CLI)
    input_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    frame: Mapped[int | None] = mapped_column(Integer)
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(255))
    model_sha256: Mapped[str] = mapped_column(String(64), index=True)
    probability: Mapped[float | None] = mapped_column(Float)  # None: not assessable (see reason)
    label: Mapped[str | None] = mapped_column(String(32))
    verdict: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)  # why not assessable (migration 0002)
    warning: Mapped[str | None] = mapped_column(Text)  # e.g. an inverted film, corrected
    threshold: Mapped[float] = mapped_column(Float)
    doubt_threshold: Mapped[float | None] = mapped_column(Float)
    fracture_threshold: Mapped[float | None] = mapped_column(Float)


class FeedbackRecord(Base):
    """A reader's own verdict on one recorded prediction (the latest one counts)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True))
    reader_label: Mapped[str] = mapped_column(String(32))  # fractured / not fractured
    reader_fractured: Mapped[bool] = mapped_column(Boolean)
    reader: Mapped[str | None] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)


metadata = Base.metadata


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs are driven by psycopg 3 (the ``serve`` extra)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest schema (Alembic ``upgrade head``, configured in code)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _reader_label(verdict: str) -> str:
    """'fracture' / 'fractured' / 'yes' / '1' → fractured; 'no fracture' / 'not fractured' / '0' → not."""
    from fracdet.data.labels import parse_label

    text = str(verdict).strip().lower()
    if text in ("fracture", "yes", "positive", "true"):
        return FRACTURED
    if text in ("no fracture", "no_fracture", "no-fracture", "none", "normal", "no", "negative", "false"):
        return NOT_FRACTURED
    value = parse_label(text)
    if value is None:
        raise FracdetError(f"reader verdict '{verdict}' not understood (use 'fracture' or 'no fracture')")
    return FRACTURED if value == 1 else NOT_FRACTURED


class RecordStore:
    """A database of readings; opening one applies the migrations."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        try:
            self.engine = create_engine(self.url, pool_pre_ping=True)
            upgrade(self.engine)
        except ArgumentError as exc:
            raise FracdetError(f"--db {url}: not a database URL ({exc})") from None
        except (SQLAlchemyError, OSError) as exc:
            raise FracdetError(f"--db {_shown(self.url)}: cannot open the record database "
                               f"({' '.join(str(exc).split())[:300]})") from None
        except ModuleNotFoundError as exc:
            raise FracdetError(f"--db {_shown(self.url)}: driver missing ({exc}); "
                               "pip install 'fracdet[serve]'") from None

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ writing
    def add_predictions(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert prediction rows (keys: the columns of :class:`PredictionRecord`); their ids."""
        now = _now()
        records = [PredictionRecord(created_at=now, **row) for row in rows]
        with Session(self.engine) as session, session.begin():
            session.add_all(records)
            session.flush()
            ids = [int(r.id) for r in records]
        return ids

    def add_feedback(self, prediction_id: int, verdict: str, reader: str | None = None,
                     comment: str | None = None) -> dict[str, Any]:
        """Record a reader's verdict on prediction ``prediction_id``; raises KeyError when unknown."""
        label = _reader_label(verdict)
        with Session(self.engine) as session, session.begin():
            pred = session.get(PredictionRecord, int(prediction_id))
            if pred is None:
                raise KeyError(prediction_id)
            fb = FeedbackRecord(prediction_id=pred.id, created_at=_now(), reader_label=label,
                                reader_fractured=label == FRACTURED, reader=reader, comment=comment)
            session.add(fb)
            session.flush()
            return {"id": int(fb.id), "prediction_id": int(pred.id), "reader_label": label,
                    "model_label": pred.label, "model_verdict": pred.verdict,
                    "agrees": (None if pred.probability is None
                               else (pred.probability >= pred.threshold) == (label == FRACTURED))}

    # ------------------------------------------------------------------ reading
    def prediction(self, prediction_id: int) -> PredictionRecord | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(PredictionRecord, int(prediction_id))

    def count(self) -> int:
        from sqlalchemy import func

        with Session(self.engine) as session:
            return int(session.scalar(select(func.count(PredictionRecord.id))) or 0)

    def reviewed(self) -> list[tuple[PredictionRecord, FeedbackRecord]]:
        """Every prediction with a reader's verdict, paired with its latest feedback, oldest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            rows = session.execute(
                select(PredictionRecord, FeedbackRecord)
                .join(FeedbackRecord, FeedbackRecord.prediction_id == PredictionRecord.id)
                .where(PredictionRecord.probability.is_not(None))  # not assessable: nothing to agree with
                .order_by(PredictionRecord.id, FeedbackRecord.created_at, FeedbackRecord.id)
            ).all()
        latest: dict[int, tuple[PredictionRecord, FeedbackRecord]] = {}
        for pred, fb in rows:
            latest[pred.id] = (pred, fb)  # later feedback replaces earlier
        return list(latest.values())


_STORES: dict[str, RecordStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(url: str) -> RecordStore:
    """The store for ``url``, opened (and migrated) once per process."""
    key = normalise_url(url)
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = RecordStore(url)
        return _STORES[key]


# ---------------------------------------------------------------------------- prediction rows
DICOM_KEYS = ("study_uid", "series_uid", "sop_uid", "modality", "body_part", "view")


def prediction_row(pred: Any, model: Any, model_name: str, *, source: str, file_name: str | None,
                   source_path: str | None, input_sha256: str | None) -> dict[str, Any]:
    """The record of one read :class:`~fracdet.inference.Prediction` (never its pixels); a not
    assessable one has no probability or label and gives its reason."""
    art = getattr(model, "artifact", model)
    meta = pred.meta or {}
    row: dict[str, Any] = {
        "source": source, "file_name": file_name, "source_path": source_path, "input_sha256": input_sha256,
        "frame": meta.get("frame"), "model_name": model_name, "model_sha256": art.sha256 or "",
        "probability": None if pred.probability is None else float(pred.probability), "label": pred.label,
        "verdict": pred.verdict, "reason": pred.reason, "warning": pred.warning,
        "threshold": float(pred.threshold),
        "doubt_threshold": float(art.doubt_threshold) if art.doubt_threshold is not None else None,
        "fracture_threshold": float(art.fracture_threshold) if art.fracture_threshold is not None else None,
    }
    for key in DICOM_KEYS:
        value = meta.get(key)
        row[key] = str(value)[:64] if value not in (None, "") else None
    return row


def record_predictions(db_url: str, predictions: Iterable[Any], model: Any, model_name: str | None = None,
                       source: str = "cli") -> list[int]:
    """Record predictions made from files (``fracdet predict --record``): each successful
    prediction becomes one row with its file's path, name and SHA-256; error rows are not
    recorded. ``model`` is the :class:`~fracdet.inference.Predictor` (or its artifact);
    ``model_name`` defaults to the artifact's name. Returns the new record ids, in order."""
    preds = [p for p in predictions if p.ok]  # read: judged, or not assessable with its reason
    hashes: dict[str, str | None] = {}
    rows = []
    for p in preds:
        path = str(p.path) if p.path is not None else None
        if path is not None and path not in hashes:
            try:
                hashes[path] = sha256_of_file(path)
            except OSError:
                hashes[path] = None
        rows.append(prediction_row(
            p, model, model_name or _artifact_name(model), source=source,
            file_name=Path(path).name if path else None,
            source_path=str(Path(path).resolve()) if path else None,
            input_sha256=hashes.get(path) if path else None))
    return open_store(db_url).add_predictions(rows) if rows else []


def _artifact_name(model: Any) -> str:
    art = getattr(model, "artifact", model)
    return f"{art.architecture}-{(art.sha256 or 'unsaved')[:12]}"


# ---------------------------------------------------------------------------- export, stats
def export_feedback(db_url: str, out: str | Path) -> tuple[int, int]:
    """Write the readers' verdicts as a labelled CSV manifest (``path,label,group``, the
    format ``fracdet evaluate`` / ``calibrate`` read): the file's path when it was recorded
    (CLI), else the uploaded file's name (relative: put the CSV beside the files), the
    reader's label, and the DICOM StudyInstanceUID as the group. One row per file (the
    latest verdict); returns (rows written, rows whose path is only a file name)."""
    reviewed = open_store(db_url).reviewed()
    seen: dict[str, tuple[str, str]] = {}
    name_only = 0
    for pred, fb in reviewed:
        path = pred.source_path or pred.file_name or f"{pred.input_sha256 or pred.id}"
        seen[path] = (fb.reader_label, pred.study_uid or "")
    name_only = sum(1 for p in seen if not Path(p).is_absolute())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group"])
        for path, (label, group) in seen.items():
            w.writerow([path, label, group])
    tmp.replace(out)
    return len(seen), name_only


@dataclass
class Proportion:
    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def wilson(self, z: float = 1.959964) -> tuple[float, float]:
        """The Wilson score 95% interval."""
        if not self.n:
            return float("nan"), float("nan")
        p, n = self.value, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def text(self) -> str:
        if not self.n:
            return "n/a (none)"
        lo, hi = self.wilson()
        return f"{self.value:.3f} (95% CI {lo:.3f}–{hi:.3f}; {self.k}/{self.n})"


def agreement_stats(db_url: str) -> list[dict[str, Any]]:
    """Model vs readers, per model (name + SHA-256): agreement of the model's label with the
    reader's, the model's sensitivity and specificity taking the reader as the reference, and
    Cohen's kappa; proportions with Wilson 95% intervals."""
    by_model: dict[tuple[str, str], list[tuple[PredictionRecord, FeedbackRecord]]] = {}
    for pred, fb in open_store(db_url).reviewed():
        by_model.setdefault((pred.model_name, pred.model_sha256), []).append((pred, fb))
    out = []
    for (name, sha), pairs in by_model.items():
        model_pos = [p.probability >= p.threshold for p, _ in pairs]
        reader_pos = [bool(fb.reader_fractured) for _, fb in pairs]
        n = len(pairs)
        agree = sum(m == r for m, r in zip(model_pos, reader_pos))
        tp = sum(m and r for m, r in zip(model_pos, reader_pos))
        tn = sum((not m) and (not r) for m, r in zip(model_pos, reader_pos))
        pos, neg = sum(reader_pos), n - sum(reader_pos)
        pm, pr = sum(model_pos) / n, pos / n
        pe = pm * pr + (1 - pm) * (1 - pr)
        kappa = (agree / n - pe) / (1 - pe) if pe < 1 else float("nan")
        verdicts: dict[str, dict[str, int]] = {}
        for p, fb in pairs:
            v = verdicts.setdefault(p.verdict or "-", {FRACTURED: 0, NOT_FRACTURED: 0})
            v[fb.reader_label] += 1
        out.append({"model_name": name, "model_sha256": sha, "n": n,
                    "agreement": Proportion(agree, n), "sensitivity": Proportion(tp, pos),
                    "specificity": Proportion(tn, neg), "kappa": kappa, "verdicts": verdicts})
    return out
