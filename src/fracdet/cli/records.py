"""``fracdet records``: the record of readings kept by ``fracdet serve`` (and ``predict --record``)
— ``export`` the readers' verdicts as a labelled CSV manifest, ``stats`` the model-vs-reader agreement."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DB_HELP = "SQLAlchemy URL of the record (default sqlite:///records.sqlite)"


def add_records(sub: Any) -> None:
    p = sub.add_parser("records", help="the record of readings: export readers' verdicts, agreement statistics")
    rsub = p.add_subparsers(dest="records_command", required=True, metavar="ACTION")
    e = rsub.add_parser("export", help="readers' verdicts as a labelled CSV manifest (path,label,group) "
                        "for fracdet evaluate / calibrate")
    e.add_argument("--db", default=None, metavar="URL", help=DB_HELP)
    e.add_argument("--out", required=True, help="CSV file to write")
    e.set_defaults(func=_cmd_export)
    s = rsub.add_parser("stats", help="model vs readers: agreement, sensitivity, specificity (Wilson 95%% CIs), kappa")
    s.add_argument("--db", default=None, metavar="URL", help=DB_HELP)
    s.set_defaults(func=_cmd_stats)


def _db(a: argparse.Namespace) -> str:
    """The URL; a SQLite file must exist already (reading the record never creates one)."""
    from pathlib import Path

    from fracdet.errors import FracdetError
    from fracdet.serve.settings import DEFAULT_DB

    url = a.db or DEFAULT_DB
    if url.startswith("sqlite:///"):
        file = url[len("sqlite:///"):].split("?", 1)[0]
        if file and file != ":memory:" and not Path(file).is_file():
            raise FracdetError(f"{file}: no record database there (fracdet serve writes one; give --db URL)")
    return url


def _cmd_export(a: argparse.Namespace) -> int:
    from fracdet.serve.records import export_feedback

    n, name_only = export_feedback(_db(a), a.out)
    print(f"wrote {n} reader-labelled file(s) to {a.out}")
    if name_only:
        print(f"note: {name_only} of them were uploaded, so only their file name is known: put {a.out} in the "
              "folder that holds those files (paths are read relative to the CSV) before fracdet evaluate / "
              "calibrate", file=sys.stderr)
    return 0 if n else 1


def _cmd_stats(a: argparse.Namespace) -> int:
    from fracdet.serve.records import agreement_stats, open_store

    stats = agreement_stats(_db(a))
    total = open_store(_db(a)).count()
    if not stats:
        print(f"{total} prediction(s) recorded, none with a reader's verdict yet")
        return 0
    print(f"{total} prediction(s) recorded; reader verdicts on {sum(s['n'] for s in stats)}")
    for s in stats:
        print(f"\nmodel {s['model_name']} (SHA-256 {s['model_sha256'][:12]}…): {s['n']} reviewed")
        print(f"  agreement    {s['agreement'].text()}")
        print(f"  sensitivity  {s['sensitivity'].text()}  (reader says fractured)")
        print(f"  specificity  {s['specificity'].text()}  (reader says not fractured)")
        kappa = s["kappa"]
        print(f"  Cohen's kappa {kappa:.3f}" if kappa == kappa else "  Cohen's kappa n/a")
        print("  model verdict → reader: " + "; ".join(
            f"{v}: {c['fractured']} fractured, {c['not fractured']} not" for v, c in sorted(s["verdicts"].items())))
    return 0
