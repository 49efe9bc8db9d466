"""Which samples of a dataset a model is evaluated or calibrated on, and a sentence saying why."""

from __future__ import annotations

from typing import Any

from fracdet.data.layouts import Dataset, Sample
from fracdet.data.splits import split_dataset
from fracdet.errors import DatasetError


def select_samples(ds: Dataset, split: str, training: dict[str, Any],
                   data: dict[str, Any] | None = None) -> tuple[list[Sample], str]:
    """The samples to evaluate and a sentence saying which and why."""
    if split == "all":
        return ds.samples, "all images"
    if ds.has_splits():
        name = "test" if split == "auto" else split
        chosen = ds.by_split(name)
        if not chosen:
            raise DatasetError(f"{ds.root}: no images in split {name!r}")
        return chosen, f"the {name!r} split of the data"
    same = bool(data) and data.get("fingerprint") == ds.fingerprint()  # the model's own training data
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
