"""Group-aware, stratified, reproducible train/val/test splitting."""

from __future__ import annotations

import logging
import random
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from fracdet.data.labels import FRACTURED
from fracdet.data.groups import merge_groups
from fracdet.data.layouts import SPLITS, Dataset, Sample, content_groups
from fracdet.errors import DatasetError

__all__ = ["assert_no_group_leakage", "merge_groups", "split_dataset"]

logger = logging.getLogger(__name__)


def split_dataset(
    ds: Dataset,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 42,
    resplit: bool = False,
    groups: Mapping[str, str] | None = None,
) -> Dataset:
    """Assign train/val/test splits; returns a new :class:`Dataset` (input untouched).

    Existing splits are kept unless ``resplit``: a dataset already holding train, val
    and test is returned as is; a missing val (or test) is carved out of train.
    Otherwise every sample gets a split, stratified by label and group-aware (a group
    is the given ``group`` joined with byte-identical files; a group counts as
    fractured if any member is). The result depends only on the seed and the set of
    paths, not on input order. Returned samples carry the merged group ids.

    ``groups``: extra groups, sample path (``str(sample.path)``) → group id, e.g. the
    duplicate groups of :func:`fracdet.data.audit.audit_dataset` (exact, pixel-identical
    and near duplicates); they are joined with the given groups (see :func:`merge_groups`).
    """
    fr = _check_fractions(fractions)
    if not ds.samples:
        raise DatasetError(f"{ds.root}: cannot split an empty dataset")
    present = {s.split for s in ds.samples}
    if not resplit and present >= set(SPLITS) and None not in present:
        if groups is None:
            _warn_given_leakage(ds.samples)
            return ds
        kept = [replace(s, meta=dict(s.meta)) for s in ds.samples]
        merge_groups(kept, groups)
        _warn_given_leakage(kept)
        return Dataset(kept, ds.root, ds.layout)

    samples = [replace(s, meta=dict(s.meta)) for s in ds.samples]
    if groups:
        merge_groups(samples, groups)
    content_groups(samples)

    keep = not resplit and None not in present and "train" in present
    if not resplit and not keep and present != {None}:
        warnings.warn(
            f"{ds.root}: given splits {sorted(p or 'none' for p in present)} are incomplete; "
            "re-splitting all samples",
            stacklevel=2,
        )
    if keep:
        _warn_given_leakage(samples)
        missing = [name for name in SPLITS[1:] if name not in present]
        train = [s for s in samples if s.split == "train"]
        carve = (fr[0],) + tuple(fr[i + 1] if SPLITS[i + 1] in missing else 0.0 for i in range(2))
        total = sum(carve)
        for sample, split in zip(train, _assign(train, tuple(c / total for c in carve), seed)):
            sample.split = split
        logger.info("kept given splits; carved %s out of train", ", ".join(missing))
    else:
        for sample, split in zip(samples, _assign(samples, fr, seed)):
            sample.split = split
    out = Dataset(samples, ds.root, ds.layout)
    for name in SPLITS:
        part = out.by_split(name)
        pos = sum(s.label == FRACTURED for s in part)
        logger.info(
            "split %s: %d samples (%d fractured, %d not)", name, len(part), pos, len(part) - pos
        )
    return out


def assert_no_group_leakage(ds: Dataset) -> None:
    """Raise :class:`DatasetError` if any group's members sit in more than one split."""
    leaks = _leaks(ds.samples)
    if leaks:
        shown = "; ".join(f"group '{g}' in {', '.join(sp)}" for g, sp in leaks[:5])
        more = f" (and {len(leaks) - 5} more)" if len(leaks) > 5 else ""
        raise DatasetError(f"{ds.root}: {len(leaks)} group(s) span several splits: {shown}{more}")


# ----------------------------------------------------------------------------- helpers


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0 or values[0] <= 0:
        raise DatasetError(
            f"split fractions must be 3 non-negative numbers with train > 0, got {fractions}"
        )
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        logger.warning("split fractions %s sum to %.3f; normalising", fractions, total)
    return values[0] / total, values[1] / total, values[2] / total


def _leaks(samples: list[Sample]) -> list[tuple[str, list[str]]]:
    splits: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        if s.group is not None and s.split is not None:
            splits[s.group].add(s.split)
    return [(g, sorted(sp)) for g, sp in sorted(splits.items()) if len(sp) > 1]


def _warn_given_leakage(samples: list[Sample]) -> None:
    leaks = _leaks(samples)
    if leaks:
        warnings.warn(
            f"{len(leaks)} group(s) span the given splits (e.g. '{leaks[0][0]}' in "
            f"{', '.join(leaks[0][1])}); kept as given",
            stacklevel=3,
        )


def _sort_key(path: Path) -> str:
    return Path(path).as_posix()


def _assign(samples: list[Sample], fractions: tuple[float, ...], seed: int) -> list[str]:
    """Split names for ``samples`` (same order), group-aware and stratified per class."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.group if s.group is not None else "path:" + _sort_key(s.path)].append(i)
    # Deterministic order independent of input order: sort by group key, then shuffle.
    keys = sorted(groups, key=lambda k: min(_sort_key(samples[i].path) for i in groups[k]))
    random.Random(seed).shuffle(keys)
    strata: dict[int, list[str]] = defaultdict(list)
    for k in keys:
        strata[int(any(samples[i].label == FRACTURED for i in groups[k]))].append(k)

    result: list[str] = [""] * len(samples)
    usable = [j for j, f in enumerate(fractions) if f > 0]
    overall = [f * len(samples) for f in fractions]  # ties between strata resolved globally
    overall_filled = [0] * len(fractions)
    for stratum in sorted(strata):
        members = sorted(strata[stratum], key=lambda k: -len(groups[k]))  # stable: keeps shuffle
        n = sum(len(groups[k]) for k in members)
        targets = [f * n for f in fractions]
        filled = [0] * len(fractions)
        for k in members:
            j = max(
                usable,
                key=lambda x: (
                    round(targets[x] - filled[x], 9),
                    round(overall[x] - overall_filled[x], 9),
                ),
            )
            filled[j] += len(groups[k])
            overall_filled[j] += len(groups[k])
            for i in groups[k]:
                result[i] = SPLITS[j]
    return result
