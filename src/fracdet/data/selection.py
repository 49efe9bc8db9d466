"""Which samples of a dataset a model is evaluated or calibrated on, and a sentence saying why."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping

from fracdet.data.layouts import Dataset, Sample
from fracdet.data.splits import split_dataset
from fracdet.errors import DatasetError


SPLIT_COLUMNS = ("path", "label", "group", "split", "region")


def _relative(path: str | Path, root: Path) -> str:
    """A sample's path relative to its dataset's root (posix), else its file name."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, RuntimeError, OSError):
        return Path(path).name


def split_manifest(ds: Dataset) -> bytes:
    """The split a model was trained with, as a CSV manifest whose paths are relative to the
    data's root (portable: stored inside the model file, read by :func:`read_split_manifest`)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SPLIT_COLUMNS)
    for s in ds.samples:
        writer.writerow([_relative(s.path, ds.root), s.label, s.group or "", s.split or "", s.region or ""])
    return buf.getvalue().encode("utf-8")


def read_split_manifest(data: bytes) -> dict[str, str]:
    """{path relative to the data root: split} from :func:`split_manifest`'s bytes."""
    rows = csv.DictReader(io.StringIO(data.decode("utf-8")))
    return {row["path"]: row["split"] for row in rows if row.get("path") and row.get("split")}


def select_samples(ds: Dataset, split: str, training: dict[str, Any],
                   data: dict[str, Any] | None = None,
                   recorded: Mapping[str, str] | None = None) -> tuple[list[Sample], str]:
    """The samples to evaluate and a sentence saying which and why.

    ``recorded``: the split the model was trained with (path relative to the data root → split,
    :func:`read_split_manifest`); with it, images the model trained or was tuned on are never
    called test images, even when the data has changed since."""
    if split == "all":
        return ds.samples, "all images"
    if ds.has_splits():
        name = "test" if split == "auto" else split
        chosen = ds.by_split(name)
        if not chosen:
            raise DatasetError(f"{ds.root}: no images in split {name!r}")
        return chosen, f"the {name!r} split of the data"
    same = bool(data) and data.get("fingerprint") == ds.fingerprint()  # the model's own training data
    if recorded:
        return _from_recorded(ds, split, recorded, same)
    if split != "auto" or same:
        name = "test" if split == "auto" else split
        fractions = tuple(training.get("fractions", (0.70, 0.15, 0.15)))
        seed = int(training.get("seed", 42))
        audit_info = (data or {}).get("audit") or {}
        if audit_info.get("split_groups") == "audit":  # trained with the audit's duplicate groups
            from fracdet.data.audit import audit_split

            re, _, _ = audit_split(ds, fractions=fractions, seed=seed,  # type: ignore[arg-type]
                                   conflicts=audit_info.get("conflicts", "exclude"))
        else:
            re = split_dataset(ds, fractions=fractions, seed=seed)  # type: ignore[arg-type]
        why = "the model was trained on this data; " if same else ""
        return re.by_split(name), f"{why}the {name!r} split re-derived with the training seed {seed}"
    return ds.samples, "all images (the data has no split and is not the model's training data)"


def _from_recorded(ds: Dataset, split: str, recorded: Mapping[str, str], same: bool) -> tuple[list[Sample], str]:
    """:func:`select_samples` by the model's recorded split."""
    name = "test" if split == "auto" else split
    known = [(s, recorded.get(_relative(s.path, ds.root))) for s in ds.samples]
    if same:
        chosen = [s for s, k in known if k == name]
        if not chosen:
            raise DatasetError(f"{ds.root}: the model's recorded split has no {name!r} images here")
        return chosen, f"the model was trained on this data; its recorded {name!r} split (stored in the model)"
    seen = sum(k in ("train", "val") for _, k in known)
    if split != "auto":
        chosen = [s for s, k in known if k == name]
        if not chosen:
            raise DatasetError(f"{ds.root}: none of these images is in the model's recorded {name!r} split "
                               "(the data differs from the model's training data)")
        return chosen, (f"the images of the model's recorded {name!r} split found here ({len(chosen)}; the data "
                        "differs from the model's training data)")
    chosen = [s for s, k in known if k not in ("train", "val")]
    if not chosen:
        raise DatasetError(f"{ds.root}: every image here was in the model's training or validation split; "
                           "none can be called a test image")
    old_test = sum(k == "test" for _, k in known)
    note = (f"the data differs from the model's training data: {old_test} image(s) of its recorded test split "
            f"and {len(chosen) - old_test} it never saw")
    if seen:
        note += f"; {seen} image(s) of its training or validation split left out"
    return chosen, note
