"""Dataset layouts on disk: split folders, class folders, CSV manifests and FracAtlas.

Every loader returns a :class:`Dataset` of :class:`Sample` records (path, 0/1 label,
optional group/split/region). Labels follow :mod:`fracdet.data.labels`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracdet.data.groups import UnionFind, merge_groups
from fracdet.data.labels import accepted_names, parse_label
from fracdet.errors import DatasetError
from fracdet.fsutil import atomic_path
from fracdet.io.images import looks_like_image

__all__ = [
    "LAYOUTS",
    "SPLITS",
    "Dataset",
    "Sample",
    "canonical_split",
    "content_groups",
    "detect_layout",
    "load_dataset",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("split-folders", "class-folders", "csv", "fracatlas")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "validation": "val", "valid": "val", "dev": "val",
    "test": "test", "testing": "test",
}
_CSV_COLUMNS = ("path", "label", "group", "split", "region")
_FRACATLAS_FOLDERS = {"fractured": 1, "non_fractured": 0}
_FRACATLAS_REGIONS = ("hand", "leg", "hip", "shoulder")
_FRACATLAS_META = ("hardware", "multiscan", "frontal", "lateral", "oblique", "fracture_count")


def canonical_split(name: str | None) -> str | None:
    """``"validation"``/``"valid"``/``"dev"`` → ``"val"`` etc.; None for unknown/empty."""
    if name is None:
        return None
    return _SPLIT_ALIASES.get(str(name).strip().lower())


@dataclass
class Sample:
    """One labelled image; ``group`` members must never be split apart."""

    path: Path
    label: int
    group: str | None = None
    split: str | None = None
    region: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """Samples plus where they came from (``root``) and how (``layout``)."""

    samples: list[Sample]
    root: Path
    layout: str

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int]:
        """Labels in sample order."""
        return [s.label for s in self.samples]

    def by_split(self, name: str) -> list[Sample]:
        """Samples of one split (aliases such as ``"validation"`` accepted)."""
        key = canonical_split(name) or name
        return [s for s in self.samples if s.split == key]

    def has_splits(self) -> bool:
        """True when every sample has a split assigned."""
        return bool(self.samples) and all(s.split is not None for s in self.samples)

    def fingerprint(self) -> str:
        """A short hash of the (path relative to the root, label) pairs: the same data on
        another machine or under another mount point has the same fingerprint."""
        h = hashlib.sha1()
        for s in sorted(self.samples, key=lambda s: str(s.path)):
            try:
                rel = Path(s.path).resolve().relative_to(self.root.resolve())
            except (ValueError, RuntimeError, OSError):  # outside the root, or a symbolic link loop
                rel = Path(Path(s.path).name)
            h.update(f"{rel.as_posix()}\t{s.label}\n".encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Counts overall, per split and per region (``None`` shown as ``"none"``)."""

        def counts(items: Iterable[Sample]) -> dict[str, int]:
            c = Counter(s.label for s in items)
            return {"count": c[0] + c[1], "positives": c[1], "negatives": c[0]}

        per_split: dict[str, list[Sample]] = defaultdict(list)
        per_region: dict[str, list[Sample]] = defaultdict(list)
        for s in self.samples:
            per_split[s.split or "none"].append(s)
            per_region[s.region or "none"].append(s)
        order = {name: i for i, name in enumerate(SPLITS)}
        split_items = sorted(per_split.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))
        return {
            "layout": self.layout,
            "root": str(self.root),
            **counts(self.samples),
            "splits": {k: counts(v) for k, v in split_items},
            "regions": {k: counts(v) for k, v in sorted(per_region.items())},
        }

    def to_csv(self, path: str | Path) -> None:
        """Write the manifest (path,label,group,split,region) atomically.

        Paths under the CSV's folder are written relative to it, others absolute.
        """
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        base = out.parent.resolve()
        with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(_CSV_COLUMNS)
            for s in self.samples:
                absolute = Path(s.path).resolve()
                try:
                    shown = absolute.relative_to(base).as_posix()
                except ValueError:
                    shown = str(absolute)
                writer.writerow([shown, s.label, s.group or "", s.split or "", s.region or ""])

    @classmethod
    def from_csv(cls, path: str | Path) -> Dataset:
        """Load a CSV manifest (see :func:`load_dataset` layout ``"csv"``)."""
        return _load_csv(Path(path))


# ----------------------------------------------------------------------------- loading


def load_dataset(path: str | Path, layout: str = "auto") -> Dataset:
    """Load a dataset folder or manifest; ``layout`` is ``"auto"`` or one of :data:`LAYOUTS`.

    Auto-detection: a ``.csv`` file → csv; a folder with ``dataset.csv`` and
    ``Fractured/`` → fracatlas; a folder with a train/val/test-like subfolder →
    split-folders; otherwise class-folders. Raises :class:`DatasetError`.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: dataset path not found")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout '{layout}' (choose from auto, {', '.join(LAYOUTS)})")
    if layout == "csv":
        ds = _load_csv(root)
    elif not root.is_dir():
        raise DatasetError(f"{root}: layout '{layout}' needs a folder")
    elif layout == "fracatlas":
        ds = _load_fracatlas(root)
    elif layout == "split-folders":
        ds = _load_split_folders(root)
    else:
        ds = Dataset(_class_folder_samples(root, split=None), root, "class-folders")
    if not ds.samples:
        raise DatasetError(f"{root}: no images found (layout '{ds.layout}')")
    _group_dicom_studies(ds.samples)
    logger.info("loaded %d samples from %s (layout %s)", len(ds.samples), root, ds.layout)
    return ds


def _group_dicom_studies(samples: list[Sample]) -> None:
    """Put the views of one DICOM study (StudyInstanceUID) into one group, joined with any
    given group, so a study never straddles two splits."""
    from fracdet.io.images import is_dicom_file

    dicoms = [s for s in samples if is_dicom_file(s.path)]
    if not dicoms:
        return
    from fracdet.io.dicom import study_uid

    studies = {str(s.path): f"study-{uid}" for s in dicoms if (uid := study_uid(s.path))}
    for s in dicoms:
        if str(s.path) in studies:
            s.meta["study_uid"] = studies[str(s.path)][len("study-"):]
    merge_groups(samples, studies)


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` (see :func:`load_dataset`)."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{root}: expected a dataset folder or a .csv manifest")
    children = {c.name.lower(): c for c in _subdirs(root)}
    if (root / "dataset.csv").is_file() and "fractured" in children:
        return "fracatlas"
    if any(canonical_split(name) for name in children):
        return "split-folders"
    return "class-folders"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith("."))


def _images_under(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, sorted, no hidden) and the skipped count.

    Kept: image extensions and DICOM files of any name (``.dcm``, extensionless or
    UID-named files detected by their ``DICM`` preamble); see
    :func:`fracdet.io.images.looks_like_image`."""
    found: list[Path] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if looks_like_image(Path(dirpath) / name):
                found.append(Path(dirpath) / name)
            else:
                skipped += 1
    return found, skipped


def _class_folder_samples(folder: Path, split: str | None) -> list[Sample]:
    classes = _subdirs(folder)
    unknown = [c.name for c in classes if parse_label(c.name) is None]
    if unknown:
        raise DatasetError(
            f"{folder}: unknown class folder(s) {unknown} (found {[c.name for c in classes]}; "
            f"accepted names: {', '.join(accepted_names())})"
        )
    loose = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    if loose:
        logger.warning("%s: ignoring %d file(s) outside class folders", folder, len(loose))
    samples: list[Sample] = []
    skipped = 0
    for cls in classes:
        label = parse_label(cls.name)
        assert label is not None
        files, n_skip = _images_under(cls)
        skipped += n_skip
        samples.extend(Sample(path=f, label=label, split=split) for f in files)
    if skipped:
        logger.warning("%s: skipped %d non-image file(s)", folder, skipped)
    return samples


def _load_split_folders(root: Path) -> Dataset:
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for child in _subdirs(root):
        split = canonical_split(child.name)
        if split is None:
            logger.warning("%s: ignoring folder '%s' (not a split name)", root, child.name)
            continue
        if split in seen:
            raise DatasetError(
                f"{root}: folders '{seen[split]}' and '{child.name}' are both split '{split}'"
            )
        seen[split] = child.name
        samples.extend(_class_folder_samples(child, split=split))
    return Dataset(samples, root, "split-folders")


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV ({exc})") from None
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in rows]
    return columns, rows


def _load_csv(path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"{path}: CSV manifest not found")
    columns, rows = _read_csv_rows(path)
    missing_cols = [c for c in ("path", "label") if c not in columns]
    if missing_cols:
        raise DatasetError(f"{path}: missing column(s) {missing_cols}; found {columns}")
    base = path.parent
    samples: list[Sample] = []
    missing: list[str] = []
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            continue
        label = parse_label(row["label"])
        if label is None:
            raise DatasetError(f"{path}:{line}: unrecognised label '{row['label']}'")
        split_raw = row.get("split", "")
        split = canonical_split(split_raw)
        if split_raw and split is None:
            raise DatasetError(
                f"{path}:{line}: unknown split '{split_raw}' (use train, val or test)"
            )
        file = Path(row["path"]).expanduser()
        if not file.is_absolute():
            file = base / file
        if not file.is_file():
            missing.append(row["path"])
        samples.append(
            Sample(path=file, label=label, group=row.get("group") or None, split=split,
                   region=row.get("region") or None)
        )
    if missing:
        raise DatasetError(
            f"{path}: {len(missing)} listed file(s) not found, e.g. {', '.join(missing[:3])}"
        )
    return Dataset(samples, base, "csv")


def _flag(row: dict[str, str], key: str) -> int:
    try:
        return int(float(row.get(key) or 0))
    except ValueError:
        return 0


def _load_fracatlas(root: Path) -> Dataset:
    _, rows = _read_csv_rows(root / "dataset.csv")
    table = {r["image_id"]: r for r in rows if r.get("image_id")}
    if not table:
        raise DatasetError(f"{root / 'dataset.csv'}: no 'image_id' rows")
    samples: list[Sample] = []
    disagree: list[str] = []
    unlisted = skipped = 0
    for folder in _subdirs(root):
        label = _FRACATLAS_FOLDERS.get(folder.name.lower())
        if label is None:
            continue
        files, n_skip = _images_under(folder)
        skipped += n_skip
        for f in files:
            row = table.get(f.name)
            sample = Sample(path=f, label=label)
            if row is None:
                unlisted += 1
            else:
                if row.get("fractured", "") != "" and _flag(row, "fractured") != label:
                    disagree.append(f.name)
                dup = row.get("dup_group", "")
                sample.group = f"dup{dup}" if dup != "" else None
                if _flag(row, "mixed"):
                    sample.region = "mixed"
                else:
                    regions = [r for r in _FRACATLAS_REGIONS if _flag(row, r)]
                    sample.region = regions[0] if len(regions) == 1 else None
                sample.meta = {k: _flag(row, k) for k in _FRACATLAS_META if k in row}
            samples.append(sample)
    if disagree:
        warnings.warn(
            f"{root}: dataset.csv 'fractured' disagrees with the folder for {len(disagree)} "
            f"file(s), keeping the folder label: {', '.join(disagree[:10])}",
            stacklevel=3,
        )
    if unlisted:
        logger.warning("%s: %d image(s) not listed in dataset.csv", root, unlisted)
    if skipped:
        logger.warning("%s: skipped %d non-image file(s)", root, skipped)
    return Dataset(samples, root, "fracatlas")


# ----------------------------------------------------------------------------- duplicates


def _sha1(path: Path, chunk: int = 1 << 20) -> str | None:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError as exc:
        logger.warning("%s: cannot hash (%s)", path, exc)
        return None
    return h.hexdigest()


def content_groups(samples: list[Sample], workers: int | None = None) -> None:
    """Merge groups so byte-identical files share one group (in place).

    Only files whose size collides are hashed (sha1, streamed, in threads). Given group
    ids and identical content are joined by union-find; a merged group is named by its
    smallest given id, or ``"sha1-<hash prefix>"`` when none had an id. Samples with no
    group and no duplicate keep ``group=None``.
    """
    uf = UnionFind(len(samples))
    uf.join_by_key((i, s.group) for i, s in enumerate(samples) if s.group is not None)

    by_size: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        try:
            by_size[Path(s.path).stat().st_size].append(i)
        except OSError:
            continue
    to_hash = [i for idx in by_size.values() if len(idx) > 1 for i in idx]
    n_workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        digests = list(pool.map(lambda i: _sha1(Path(samples[i].path)), to_hash))
    hash_of: dict[int, str] = {}
    for i, digest in zip(to_hash, digests):
        if digest is not None:
            hash_of[i] = digest
            samples[i].meta["sha1"] = digest
    uf.join_by_key((i, "sha1:" + d) for i, d in hash_of.items())
    merged = 0
    for idx in uf.components():
        if len(idx) == 1:
            continue
        given = sorted({samples[i].group for i in idx if samples[i].group is not None})
        if given:
            name = given[0]
        else:
            name = "sha1-" + min(hash_of[i] for i in idx if i in hash_of)[:16]
        if len(given) != 1 or any(samples[i].group is None for i in idx):
            merged += 1
        for i in idx:
            samples[i].group = name
    if merged:
        logger.info("content_groups: %d group(s) formed or merged by identical bytes", merged)
