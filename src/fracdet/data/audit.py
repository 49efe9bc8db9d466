"""``fracdet audit``: duplicates, near-duplicates, leakage, label conflicts and bad files.

What is a duplicate group: files joined (union-find) by any of

* ``exact`` — the same bytes (sha1),
* ``pixel`` — the same decoded pixels, other bytes (re-saved, other container/metadata),
* ``near``  — the same radiograph rescaled, re-encoded, slightly cropped, brightness-shifted,
  rotated by 90/180/270° or flipped: the 64-bit phash of one file is within
  ``threshold`` bits of one of the 8 rotations/flips of the other's, **and** the 256-bit
  phash under that same rotation/flip is within ``fine_threshold`` bits.

The defaults (:data:`NEAR_THRESHOLD`, :data:`FINE_THRESHOLD`) were chosen from measured
distance distributions on FracAtlas (``benchmarks/audit_threshold.py``): planted copies
vs pairs of distinct radiographs. The fine hash is what separates two *different* images
of the same coarse shape (which a 64-bit hash alone cannot).

A group **leaks** when its members sit in more than one split, and is a **label conflict**
when its members carry different labels. Declared groups (the manifest's ``group``
column, FracAtlas' ``dup_group``) are checked for leakage too, not for conflicts (a
patient may well have a fractured and an intact film).
"""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fracdet.data.groups import UnionFind
from fracdet.data.hashing import HashCache, fingerprint_files
from fracdet.data.labels import parse_label
from fracdet.data.layouts import SPLITS, Dataset, Sample, load_dataset
from fracdet.errors import DatasetError
from fracdet.io.images import is_image_file

__all__ = [
    "FAIL_ON",
    "FINE_THRESHOLD",
    "NEAR_THRESHOLD",
    "AuditReport",
    "DupGroup",
    "audit",
    "audit_dataset",
    "audit_split",
    "cross_duplicates",
    "near_pairs",
]

logger = logging.getLogger(__name__)

NEAR_THRESHOLD = 10
"""Max Hamming distance of the 64-bit phash (best of 8 rotations/flips) for a candidate."""
FINE_THRESHOLD = 24
"""Max Hamming distance of the 256-bit phash (same rotation/flip) to confirm a candidate."""
MIN_USABLE_SIDE = 64
"""Images whose shorter side is below this are reported as too small to use."""
FAIL_ON = ("leakage", "conflict", "duplicates", "unreadable", "disagreement")

_UNION_KINDS = ("exact", "pixel", "near")


# ----------------------------------------------------------------------------- data types


@dataclass
class DupGroup:
    """Files that are copies of one radiograph (see the module docstring)."""

    id: str
    members: list[int]
    kinds: list[str]
    splits: list[str]
    labels: list[int]
    max_near_distance: int | None = None

    @property
    def leak(self) -> bool:
        return len(self.splits) > 1

    @property
    def conflict(self) -> bool:
        return len(self.labels) > 1


@dataclass
class AuditReport:
    """Everything the audit found; :meth:`to_dict` is the JSON report."""

    root: str
    layout: str
    samples: list[Sample]
    files: list[dict[str, Any]]
    groups: list[DupGroup]
    declared_leaks: list[dict[str, Any]]
    disagreements: list[dict[str, Any]]
    non_image_files: list[str]
    settings: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)

    # -- views
    @property
    def leaking(self) -> list[DupGroup]:
        return [g for g in self.groups if g.leak]

    @property
    def conflicts(self) -> list[DupGroup]:
        return [g for g in self.groups if g.conflict]

    @property
    def unreadable(self) -> list[dict[str, Any]]:
        return [f for f in self.files if not f["ok"]]

    def group_of(self) -> dict[str, str]:
        """Sample path (as given) → duplicate-group id, for grouped members only."""
        return {str(self.samples[i].path): g.id for g in self.groups for i in g.members}

    def conflict_paths(self) -> set[str]:
        return {str(self.samples[i].path) for g in self.conflicts for i in g.members}

    def has_splits(self) -> bool:
        return any(s.split for s in self.samples)

    def counts(self) -> dict[str, Any]:
        kinds = Counter(k for g in self.groups for k in g.kinds)
        errs = Counter(f["error_kind"] for f in self.unreadable)
        small = sum(1 for f in self.files if f.get("small"))
        return {
            "files": len(self.files),
            "readable": len(self.files) - len(self.unreadable),
            "duplicate_groups": len(self.groups),
            "files_in_duplicate_groups": sum(len(g.members) for g in self.groups),
            "exact_groups": kinds["exact"],
            "pixel_groups": kinds["pixel"],
            "near_groups": kinds["near"],
            "leaking_groups": len(self.leaking),
            "leaking_files": sum(len(g.members) for g in self.leaking),
            "declared_group_leaks": len(self.declared_leaks),
            "conflict_groups": len(self.conflicts),
            "conflict_files": sum(len(g.members) for g in self.conflicts),
            "unreadable": len(self.unreadable),
            "unreadable_by_kind": dict(sorted(errs.items())),
            "truncated": sum(1 for f in self.files if f.get("truncated")),
            "too_small": small + errs["too_small"],
            "label_disagreements": len(self.disagreements),
            "non_image_files": len(self.non_image_files),
        }

    def failures(self, fail_on: Iterable[str]) -> list[str]:
        """Which of the ``fail_on`` conditions hold (for the exit status)."""
        c = self.counts()
        tests = {
            "leakage": c["leaking_groups"] + c["declared_group_leaks"] > 0,
            "conflict": c["conflict_groups"] > 0,
            "duplicates": c["duplicate_groups"] > 0,
            "unreadable": c["unreadable"] > 0,
            "disagreement": c["label_disagreements"] > 0,
        }
        return [name for name in fail_on if tests.get(name)]

    def stats(self) -> dict[str, Any]:
        ok = [f for f in self.files if f["ok"]]
        sides = np.array([[f["width"], f["height"]] for f in ok]) if ok else np.zeros((0, 2))
        size: dict[str, Any] = {}
        if len(sides):
            for j, name in enumerate(("width", "height")):
                col = sides[:, j]
                size[name] = {"min": int(col.min()), "median": float(np.median(col)), "max": int(col.max())}
        balance: dict[str, dict[str, int]] = {}
        for s in self.samples:
            b = balance.setdefault(s.split or "none", {"fractured": 0, "not_fractured": 0})
            b["fractured" if s.label == 1 else "not_fractured"] += 1
        order = {n: i for i, n in enumerate(SPLITS)}
        return {
            "modes": dict(Counter(f["mode"] for f in ok).most_common()),
            "formats": dict(Counter(f["format"] for f in ok).most_common()),
            "bit_depths": dict(Counter(str(f["bit_depth"]) for f in ok).most_common()),
            "size": size,
            "class_balance": dict(sorted(balance.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))),
        }

    def to_dict(self) -> dict[str, Any]:
        def member(i: int) -> dict[str, Any]:
            s = self.samples[i]
            return {"path": str(s.path), "split": s.split, "label": s.label, "kind": self.files[i].get("kind")}

        gid = {i: g.id for g in self.groups for i in g.members}
        files = []
        for i, (s, f) in enumerate(zip(self.samples, self.files)):
            row = {"path": str(s.path), "split": s.split, "label": s.label, "declared_group": s.group,
                   "duplicate_group": gid.get(i)}
            row.update({k: v for k, v in f.items() if k not in ("ph64", "ph256")})
            files.append(row)
        return {
            "root": self.root,
            "layout": self.layout,
            "settings": self.settings,
            "counts": self.counts(),
            "stats": self.stats(),
            "groups": [
                {"id": g.id, "kinds": g.kinds, "leak": g.leak, "conflict": g.conflict, "splits": g.splits,
                 "labels": g.labels, "max_near_distance": g.max_near_distance,
                 "members": [member(i) for i in g.members]}
                for g in self.groups
            ],
            "declared_group_leaks": self.declared_leaks,
            "label_disagreements": self.disagreements,
            "non_image_files": self.non_image_files,
            "files": files,
            "timing": self.timing,
        }

    def summary_line(self) -> str:
        """One line: counts of leaks and conflicts (for errors and logs)."""
        c = self.counts()
        return (f"{c['leaking_groups']} duplicate group(s) ({c['leaking_files']} files) cross splits, "
                f"{c['declared_group_leaks']} declared group(s) cross splits, "
                f"{c['conflict_groups']} group(s) ({c['conflict_files']} files) have conflicting labels")


# ----------------------------------------------------------------------------- comparison


def _words(hexes: Sequence[str], bits: int) -> np.ndarray:
    """Hex hashes → uint64 array (..., bits // 64)."""
    n = bits // 64
    out = np.zeros((len(hexes), n), dtype=np.uint64)
    for i, h in enumerate(hexes):
        for w in range(n):
            out[i, w] = int(h[16 * w: 16 * (w + 1)], 16)
    return out


def _hash_arrays(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8) uint64 coarse hashes and (n, 8, 4) uint64 fine hashes."""
    n = len(records)
    h64 = np.zeros((n, 8), dtype=np.uint64)
    h256 = np.zeros((n, 8, 4), dtype=np.uint64)
    for i, r in enumerate(records):
        h64[i] = _words(r["ph64"], 64)[:, 0]
        h256[i] = _words(r["ph256"], 256)
    return h64, h256


def near_pairs(query: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]] | None = None,
               threshold: int = NEAR_THRESHOLD, fine_threshold: int = FINE_THRESHOLD,
               budget: int = 4_000_000) -> list[tuple[int, int, int, int]]:
    """Near-duplicate pairs ``(i, j, d64, d256)``: ``i`` indexes ``query``, ``j`` ``reference``
    (``reference=None``: pairs within ``query``, ``i < j``). Records need ``ph64``/``ph256``.

    Chunked all-pairs popcount: memory stays at about ``budget`` 64-bit words whatever n is.
    """
    within = reference is None
    ref = query if reference is None else reference
    if not query or not ref:
        return []
    q64, q256 = _hash_arrays(query)
    r64, r256 = (q64, q256) if within else _hash_arrays(ref)
    base = q64[:, 0]
    n_ref = len(ref)
    chunk = max(1, budget // (8 * n_ref))
    out: list[tuple[int, int, int, int]] = []
    for s in range(0, len(query), chunk):
        e = min(len(query), s + chunk)
        d = np.bitwise_count(base[s:e, None, None] ^ r64[None, :, :])  # (c, n_ref, 8)
        ci, j, k = np.nonzero(d <= threshold)
        i = ci + s
        if within:
            keep = j > i
            ci, i, j, k = ci[keep], i[keep], j[keep], k[keep]
        if not len(i):
            continue
        fine = np.bitwise_count(q256[i, 0, :] ^ r256[j, k, :]).sum(axis=1)
        coarse = d[ci, j, k]
        best: dict[tuple[int, int], tuple[int, int]] = {}
        for a, b, c64, c256 in zip(i.tolist(), j.tolist(), coarse.tolist(), fine.tolist()):
            if c256 <= fine_threshold and ((a, b) not in best or (c256, c64) < best[(a, b)][::-1]):
                best[(a, b)] = (c64, c256)
        out.extend((a, b, c64, c256) for (a, b), (c64, c256) in best.items())
    return sorted(out)


# ----------------------------------------------------------------------------- the audit


def audit(path: str | Path, layout: str = "auto", **kwargs: Any) -> AuditReport:
    """Load a dataset in any layout ``fracdet train`` reads and audit it (see :func:`audit_dataset`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader's label-disagreement warning: reported below
        ds = load_dataset(path, layout=layout)
    return audit_dataset(ds, **kwargs)


def audit_dataset(ds: Dataset, threshold: int = NEAR_THRESHOLD, fine_threshold: int = FINE_THRESHOLD,
                  cache: HashCache | str | Path | bool | None = True, progress: bool = False,
                  workers: int | None = None, min_side: int = MIN_USABLE_SIDE) -> AuditReport:
    """Audit ``ds``: fingerprints (cached), duplicate groups, leakage, conflicts, bad files.

    ``cache``: True for the default cache dir, a folder, a :class:`HashCache`, or False/None.
    """
    t0 = time.perf_counter()
    own = not isinstance(cache, HashCache)
    hc: HashCache | None
    if isinstance(cache, HashCache):
        hc = cache
    elif cache is True:
        hc = HashCache()
    elif cache:
        hc = HashCache(cache)
    else:
        hc = None
    samples = list(ds.samples)
    try:
        records, hits = fingerprint_files([Path(s.path) for s in samples], hc, progress=progress, workers=workers)
    finally:
        if own and hc is not None:
            hc.close()
    t1 = time.perf_counter()
    files = [dict(r) for r in records]
    for f in files:
        f["small"] = bool(f["ok"] and min(f["width"], f["height"]) < min_side)

    uf = UnionFind(len(samples))
    kinds_of: dict[int, set[str]] = defaultdict(set)  # root-independent: kept per edge, merged below
    edges: list[tuple[int, int, str, int | None]] = []
    for key, kind in (("sha1", "exact"), ("pixel", "pixel")):
        first: dict[str, int] = {}
        for i, f in enumerate(files):
            v = f.get(key)
            if not v:
                continue
            if v in first:
                j = first[v]
                if kind == "pixel" and files[j]["sha1"] == f["sha1"]:
                    continue  # already an exact duplicate
                edges.append((j, i, kind, None))
            else:
                first[v] = i
    readable = [i for i, f in enumerate(files) if f["ok"]]
    pixel_of = {i: files[i]["pixel"] for i in readable}
    for a, b, d64, d256 in near_pairs([files[i] for i in readable], None, threshold, fine_threshold):
        i, j = readable[a], readable[b]
        if pixel_of[i] != pixel_of[j]:
            edges.append((i, j, "near", d64))
    for i, j, _, _ in edges:
        uf.union(i, j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(samples)):
        members[uf.find(i)].append(i)
    max_d: dict[int, int] = {}
    for i, j, kind, d in edges:
        root = uf.find(i)
        kinds_of[root].add(kind)
        if d is not None:
            max_d[root] = max(max_d.get(root, 0), d)
    raw = [(root, idx) for root, idx in members.items() if len(idx) > 1]
    raw.sort(key=lambda ri: min(str(samples[i].path) for i in ri[1]))
    groups = []
    for n, (root, idx) in enumerate(raw, start=1):
        idx = sorted(idx, key=lambda i: str(samples[i].path))
        groups.append(DupGroup(
            id=f"dup-{n:04d}", members=idx, kinds=[k for k in _UNION_KINDS if k in kinds_of[root]],
            splits=sorted({samples[i].split or "none" for i in idx}, key=_split_order),
            labels=sorted({samples[i].label for i in idx}), max_near_distance=max_d.get(root),
        ))
    report = AuditReport(
        root=str(ds.root), layout=ds.layout, samples=samples, files=files, groups=groups,
        declared_leaks=_declared_leaks(samples), disagreements=_disagreements(ds),
        non_image_files=_non_image_files(samples), settings={
            "threshold": threshold, "fine_threshold": fine_threshold, "min_side": min_side,
            "cache": str(hc.path) if hc is not None else None,
        },
    )
    report.timing = {"hashing_s": round(t1 - t0, 3), "grouping_s": round(time.perf_counter() - t1, 3),
                     "cached_files": hits, "hashed_files": len(samples) - hits}
    logger.info("audit of %s: %d files (%d from cache) in %.2fs", ds.root, len(samples), hits,
                time.perf_counter() - t0)
    return report


def _split_order(name: str) -> tuple[int, str]:
    return (SPLITS.index(name) if name in SPLITS else 9, name)


def _declared_leaks(samples: list[Sample]) -> list[dict[str, Any]]:
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.group is not None:
            by_group[s.group].append(s)
    out = []
    for g, items in sorted(by_group.items()):
        splits = sorted({s.split for s in items if s.split}, key=_split_order)
        if len(splits) > 1:
            out.append({"group": g, "splits": splits, "paths": [str(s.path) for s in items]})
    return out


def _disagreements(ds: Dataset) -> list[dict[str, Any]]:
    """Folder label vs manifest label. FracAtlas: folder vs dataset.csv ``fractured`` (and
    ``folder_label``); CSV manifests: any parent folder named like a class vs the ``label``."""
    out: list[dict[str, Any]] = []
    if ds.layout == "fracatlas":
        table: dict[str, dict[str, str]] = {}
        try:
            with open(Path(ds.root) / "dataset.csv", newline="", encoding="utf-8-sig") as fh:
                table = {r.get("image_id", ""): r for r in csv.DictReader(fh)}
        except (OSError, csv.Error) as exc:
            logger.warning("%s: cannot read dataset.csv (%s)", ds.root, exc)
        for s in ds.samples:
            row = table.get(Path(s.path).name)
            if row is None:
                continue
            for column in ("fractured", "folder_label"):
                v = (row.get(column) or "").strip()
                if v in ("0", "1") and int(v) != s.label:
                    out.append({"path": str(s.path), "folder_label": s.label, "manifest_label": int(v),
                                "source": f"dataset.csv column '{column}'"})
    elif ds.layout == "csv":
        for s in ds.samples:
            for part in Path(s.path).parent.parts[-3:]:
                lab = parse_label(part)
                if lab is not None and lab != s.label:
                    out.append({"path": str(s.path), "folder_label": lab, "manifest_label": s.label,
                                "source": f"folder '{part}' vs manifest label"})
                    break
    return out


def _non_image_files(samples: list[Sample]) -> list[str]:
    folders = sorted({Path(s.path).parent for s in samples})
    out = []
    for folder in folders:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            try:
                regular = e.is_file()
            except OSError:  # a symbolic link loop: the readers report it, not this listing
                continue
            if regular and not e.name.startswith(".") and not is_image_file(e.name) \
                    and not e.name.lower().endswith((".csv", ".md", ".txt", ".json")):
                out.append(os.path.join(folder, e.name))
    return out


# ----------------------------------------------------------------------------- using it


def cross_duplicates(query: Dataset | list[Sample], reference: Dataset | list[Sample],
                     threshold: int = NEAR_THRESHOLD, fine_threshold: int = FINE_THRESHOLD,
                     cache: HashCache | str | Path | bool | None = True,
                     progress: bool = False) -> dict[int, str]:
    """Indices of ``query`` samples that duplicate (exact, pixel or near) any ``reference``
    sample, each with the path of one such reference file."""
    q = query.samples if isinstance(query, Dataset) else query
    r = reference.samples if isinstance(reference, Dataset) else reference
    hc = HashCache() if cache is True else HashCache(cache) if cache and not isinstance(cache, HashCache) \
        else (cache or None)
    try:
        qf, _ = fingerprint_files([Path(s.path) for s in q], hc, progress=progress)  # type: ignore[arg-type]
        rf, _ = fingerprint_files([Path(s.path) for s in r], hc, progress=progress)  # type: ignore[arg-type]
    finally:
        if hc is not None and not isinstance(cache, HashCache):
            hc.close()
    found: dict[int, str] = {}
    for key in ("sha1", "pixel"):
        ref_of = {f[key]: j for j, f in enumerate(rf) if f.get(key)}
        for i, f in enumerate(qf):
            if f.get(key) in ref_of and i not in found:
                found[i] = str(r[ref_of[f[key]]].path)
    qi = [i for i, f in enumerate(qf) if f["ok"]]
    ri = [j for j, f in enumerate(rf) if f["ok"]]
    for a, b, _, _ in near_pairs([qf[i] for i in qi], [rf[j] for j in ri], threshold, fine_threshold):
        found.setdefault(qi[a], str(r[ri[b]].path))
    return dict(sorted(found.items()))


def audit_split(ds: Dataset, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15), seed: int = 42,
                resplit: bool = False, conflicts: str = "exclude", report: AuditReport | None = None,
                **audit_kwargs: Any) -> tuple[Dataset, AuditReport, list[Sample]]:
    """Split ``ds`` so that no duplicate group (exact, pixel, near) or declared group straddles
    two splits; returns (split dataset, the audit, excluded samples).

    ``conflicts``: ``"exclude"`` drops every member of a label-conflict group (their label is
    unknown), ``"keep"`` keeps them (in one split, with their labels as given). Given splits
    are kept unless ``resplit`` (as :func:`~fracdet.data.splits.split_dataset`).
    """
    from fracdet.data.splits import split_dataset

    if conflicts not in ("exclude", "keep"):
        raise DatasetError(f"conflicts must be 'exclude' or 'keep', got {conflicts!r}")
    if report is None:
        report = audit_dataset(ds, **audit_kwargs)
    drop = report.conflict_paths() if conflicts == "exclude" else set()
    kept = [s for s in ds.samples if str(s.path) not in drop]
    excluded = [s for s in ds.samples if str(s.path) in drop]
    if excluded:
        logger.warning("excluding %d file(s) in %d label-conflict group(s)", len(excluded), len(report.conflicts))
    if not kept:
        raise DatasetError(f"{ds.root}: nothing left after excluding label conflicts")
    out = split_dataset(Dataset(kept, ds.root, ds.layout), fractions=fractions, seed=seed, resplit=resplit,
                        groups=report.group_of())
    return out, report, excluded


