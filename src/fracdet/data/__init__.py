"""Datasets: labels, on-disk layouts and leakage-free splits."""

from fracdet.data.labels import FRACTURED, LABEL_NAMES, NOT_FRACTURED, parse_label
from fracdet.data.layouts import (
    LAYOUTS,
    SPLITS,
    Dataset,
    Sample,
    canonical_split,
    content_groups,
    detect_layout,
    load_dataset,
)
from fracdet.data.splits import assert_no_group_leakage, split_dataset

__all__ = [
    "FRACTURED",
    "LABEL_NAMES",
    "LAYOUTS",
    "NOT_FRACTURED",
    "SPLITS",
    "Dataset",
    "Sample",
    "assert_no_group_leakage",
    "canonical_split",
    "content_groups",
    "detect_layout",
    "load_dataset",
    "parse_label",
    "split_dataset",
]
