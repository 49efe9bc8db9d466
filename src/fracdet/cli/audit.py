"""``fracdet audit`` (duplicates, leakage, label conflicts, bad files) and ``fracdet split``
(a clean, group-aware stratified split written as a CSV manifest)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fracdet.cli.options import add_layout_option


def _common(p: argparse.ArgumentParser) -> None:
    from fracdet.data.audit import FINE_THRESHOLD, NEAR_THRESHOLD

    add_layout_option(p)
    p.add_argument("--threshold", type=int, default=NEAR_THRESHOLD,
                   help=f"near-duplicate: max 64-bit phash distance over the 8 rotations/flips (default {NEAR_THRESHOLD})")
    p.add_argument("--fine-threshold", type=int, default=FINE_THRESHOLD,
                   help=f"near-duplicate: max 256-bit phash distance to confirm (default {FINE_THRESHOLD})")
    p.add_argument("--cache-dir", help="hash cache folder (default $FRACDET_CACHE or ~/.cache/fracdet/hashes)")
    p.add_argument("--no-cache", action="store_true", help="hash every file again, store nothing")


def _cache(a: argparse.Namespace) -> Any:
    return False if a.no_cache else (a.cache_dir or True)


def add_audit(sub: Any) -> None:
    from fracdet.data.audit import FAIL_ON

    p = sub.add_parser("audit", help="find duplicates, near-duplicates, split leakage, label conflicts and bad files")
    p.add_argument("data", help="dataset in any layout `fracdet train` reads")
    _common(p)
    p.add_argument("--json", default="audit.json", help="JSON report with every group and file (default audit.json)")
    p.add_argument("--fail-on", default="leakage,conflict",
                   help=f"comma-separated conditions that give exit status 1: {', '.join(FAIL_ON)}, or none "
                        "(default leakage,conflict)")
    p.add_argument("--top", type=int, default=10, help="worst offenders to list (default 10)")
    p.add_argument("--min-side", type=int, default=64, help="report images with a shorter side below this")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(a: argparse.Namespace) -> int:
    from fracdet.data.audit import FAIL_ON, audit
    from fracdet.errors import DatasetError
    from fracdet.fsutil import write_json

    fail_on = [f.strip() for f in a.fail_on.split(",") if f.strip() and f.strip() != "none"]
    bad = [f for f in fail_on if f not in FAIL_ON]
    if bad:
        raise DatasetError(f"--fail-on: unknown condition(s) {bad} (choose from {', '.join(FAIL_ON)}, none)")
    report = audit(a.data, layout=a.layout, threshold=a.threshold, fine_threshold=a.fine_threshold,
                   cache=_cache(a), progress=sys.stderr.isatty(), min_side=a.min_side)
    print_report(report, a.top)
    if a.json:
        write_json(a.json, report.to_dict())
        print(f"report: {a.json}")
    failed = report.failures(fail_on)
    if failed:
        print(f"audit failed on: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_report(report: Any, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(140, Console().width))
    c = report.counts()
    t = Table(title=f"audit of {report.root} (layout {report.layout})", show_header=True)
    t.add_column("finding")
    t.add_column("count", justify="right")
    rows = [
        ("files", c["files"], ""),
        ("duplicate groups (files)", f"{c['duplicate_groups']} ({c['files_in_duplicate_groups']})", ""),
        ("  with exact copies / pixel-identical / near", f"{c['exact_groups']} / {c['pixel_groups']} / {c['near_groups']}", ""),
        ("groups crossing splits (leakage)", f"{c['leaking_groups']} ({c['leaking_files']} files)",
         "bold red" if c["leaking_groups"] else ""),
        ("declared groups crossing splits", c["declared_group_leaks"], "bold red" if c["declared_group_leaks"] else ""),
        ("groups with conflicting labels", f"{c['conflict_groups']} ({c['conflict_files']} files)",
         "bold red" if c["conflict_groups"] else ""),
        ("label disagreements folder vs manifest", c["label_disagreements"], "yellow" if c["label_disagreements"] else ""),
        ("unreadable files", f"{c['unreadable']} {c['unreadable_by_kind'] or ''}", "red" if c["unreadable"] else ""),
        ("truncated (decoded partly)", c["truncated"], "yellow" if c["truncated"] else ""),
        ("too small", c["too_small"], "yellow" if c["too_small"] else ""),
        ("non-image files beside images", c["non_image_files"], ""),
    ]
    for name, value, style in rows:
        t.add_row(name, str(value), style=style)
    con.print(t)
    st = report.stats()
    con.print(f"modes {st['modes']}  formats {st['formats']}  size {st['size']}")
    con.print("class balance: " + "; ".join(f"{k}: {v['fractured']} fractured / {v['not_fractured']} not"
                                            for k, v in st["class_balance"].items()))
    worst = sorted(report.groups, key=lambda g: (not g.conflict, not g.leak, -len(g.members), g.id))
    worst = [g for g in worst if g.conflict or g.leak][:top]
    if worst:
        w = Table(title="worst offenders", show_lines=False)
        for col in ("group", "problem", "kind"):
            w.add_column(col)
        w.add_column("members (split, label)", overflow="fold")
        for g in worst:
            problem = " + ".join(p for p, on in (("label conflict", g.conflict), ("leakage", g.leak)) if on)
            members = "\n".join(f"{report.samples[i].path} ({report.samples[i].split or '-'}, {report.samples[i].label})"
                                for i in g.members)
            w.add_row(g.id, problem, "/".join(g.kinds), members)
        con.print(w)
    for f in report.unreadable[:top]:
        con.print(f"[red]unreadable[/] {f['error']}")
    trunc = [str(s.path) for s, f in zip(report.samples, report.files) if f.get("truncated")]
    for p in trunc[:top]:
        con.print(f"[yellow]truncated[/] {p}")
    for d in report.disagreements[:top]:
        con.print(f"[yellow]label disagreement[/] {d['path']}: folder {d['folder_label']}, "
                  f"{d['source']} {d['manifest_label']}")
    t2 = report.timing
    con.print(f"{c['files']} files in {t2.get('hashing_s', 0) + t2.get('grouping_s', 0):.1f}s "
              f"({t2.get('cached_files', 0)} from cache)")


def add_split(sub: Any) -> None:
    p = sub.add_parser("split", help="write a clean group-aware stratified split (CSV manifest) with duplicate groups")
    p.add_argument("data", help="dataset in any layout `fracdet train` reads")
    p.add_argument("--out", required=True, help="CSV manifest to write (path,label,group,split,region)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.70, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--merge", action="store_true", help="merge the given splits and re-split everything")
    p.add_argument("--conflicts", choices=["exclude", "keep"], default="exclude",
                   help="label-conflict groups: leave them out (default) or keep them")
    _common(p)
    p.set_defaults(func=_cmd_split)


def _cmd_split(a: argparse.Namespace) -> int:
    import warnings
    from fracdet.data.audit import audit_split
    from fracdet.data.layouts import load_dataset
    from fracdet.data.splits import assert_no_group_leakage
    from fracdet.errors import DatasetError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(a.data, layout=a.layout)
        out, report, excluded = audit_split(
            ds, fractions=tuple(a.fractions), seed=a.seed, resplit=a.merge, conflicts=a.conflicts,
            threshold=a.threshold, fine_threshold=a.fine_threshold, cache=_cache(a),
            progress=sys.stderr.isatty())
    try:
        assert_no_group_leakage(out)
    except DatasetError as exc:
        raise DatasetError(f"{exc}; the given splits leak — use --merge to re-split") from None
    out.to_csv(a.out)
    counts = {name: len(out.by_split(name)) for name in ("train", "val", "test")}
    print(f"wrote {a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; {len(report.groups)} duplicate group(s) kept together"
          + (f"; {len(excluded)} file(s) of {len(report.conflicts)} label-conflict group(s) excluded" if excluded else ""))
    return 0
