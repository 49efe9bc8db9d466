"""Tests for fracdet.data.splits: fractions, stratification, groups, reproducibility."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from fracdet.data import Dataset, Sample, assert_no_group_leakage, split_dataset
from fracdet.errors import DatasetError


def _dataset(tmp_path: Path, n: int = 200, pos_every: int = 4, group_size: int = 1) -> Dataset:
    """``n`` tiny files with distinct bytes; every ``pos_every``-th is fractured."""
    samples = []
    for i in range(n):
        p = tmp_path / f"img{i:04d}.png"
        p.write_bytes(f"unique-{i}".encode())
        group = f"g{i // group_size}" if group_size > 1 else None
        samples.append(Sample(path=p, label=int(i % pos_every == 0), group=group))
    return Dataset(samples, tmp_path, "class-folders")


def _assignment(ds: Dataset) -> dict[str, str | None]:
    return {s.path.name: s.split for s in ds.samples}


def test_fractions_and_stratification(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    out = split_dataset(ds)
    counts = Counter(s.split for s in out.samples)
    assert counts == {"train": 140, "val": 30, "test": 30}
    pos = Counter(s.split for s in out.samples if s.label == 1)
    assert abs(pos["train"] - 35) <= 1
    assert abs(pos["val"] - 7.5) <= 1 and abs(pos["test"] - 7.5) <= 1
    assert all(s.split is None for s in ds.samples)  # input untouched
    assert out.layout == ds.layout and out.has_splits()


def test_groups_never_split(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, n=210, group_size=3)
    out = split_dataset(ds, seed=7)
    assert_no_group_leakage(out)
    counts = Counter(s.split for s in out.samples)
    assert abs(counts["train"] - 147) <= 3 and abs(counts["val"] - 31.5) <= 3


def test_duplicate_bytes_are_grouped(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    for i in range(1, 40, 2):  # make pairs of identical files
        ds.samples[i].path.write_bytes(ds.samples[i - 1].path.read_bytes())
    for seed in range(5):
        out = split_dataset(ds, seed=seed)
        by_name = _assignment(out)
        for i in range(1, 40, 2):
            assert by_name[f"img{i:04d}.png"] == by_name[f"img{i - 1:04d}.png"]
        assert_no_group_leakage(out)


def test_reproducible_and_order_independent(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    a = _assignment(split_dataset(ds, seed=3))
    shuffled = list(ds.samples)
    random.Random(0).shuffle(shuffled)
    b = _assignment(split_dataset(Dataset(shuffled, ds.root, ds.layout), seed=3))
    assert a == b
    assert a != _assignment(split_dataset(ds, seed=4))


def test_existing_splits_kept_or_resplit(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, n=60)
    for i, s in enumerate(ds.samples):
        s.split = ("train", "val", "test")[i % 3]
    assert split_dataset(ds) is ds
    out = split_dataset(ds, resplit=True)
    assert Counter(s.split for s in out.samples) == {"train": 42, "val": 9, "test": 9}


def test_val_carved_out_of_train(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, n=100)
    for i, s in enumerate(ds.samples):
        s.split = "test" if i < 20 else "train"
    out = split_dataset(ds)
    counts = Counter(s.split for s in out.samples)
    assert counts["test"] == 20
    assert {s.path for s in out.by_split("test")} == {s.path for s in ds.samples[:20]}
    assert abs(counts["val"] - 80 * 0.15 / 0.85) <= 1
    assert any(s.label == 1 for s in out.by_split("val"))


def test_leakage_detected(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, n=4)
    for s, split in zip(ds.samples, ["train", "test", "train", "val"]):
        s.group, s.split = "same", split
    with pytest.raises(DatasetError, match="group 'same'"):
        assert_no_group_leakage(ds)


def test_bad_fractions(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        split_dataset(_dataset(tmp_path, n=10), fractions=(0.0, 0.5, 0.5))


# ----------------------------------------------------------------------------- the model's recorded split
def _recorded(tmp_path):
    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import read_split_manifest, split_manifest
    from synth import make_class_folders

    root = make_class_folders(tmp_path / "data", 20)
    ds = split_dataset(load_dataset(root), seed=3)
    return root, ds, read_split_manifest(split_manifest(ds))


def test_recorded_split_round_trips_with_root_relative_paths(tmp_path):
    root, ds, recorded = _recorded(tmp_path)
    assert len(recorded) == len(ds.samples) and not any(p.startswith("/") for p in recorded)
    assert Counter(recorded.values()) == Counter(s.split for s in ds.samples)


def test_evaluation_uses_the_recorded_split_and_never_calls_training_images_test(tmp_path):
    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import select_samples
    from synth import write_image

    root, ds, recorded = _recorded(tmp_path)
    data = {"fingerprint": load_dataset(root).fingerprint()}
    same, note = select_samples(load_dataset(root), "auto", {"seed": 999}, data, recorded)
    assert {Path(s.path).name for s in same} == {Path(s.path).name for s in ds.by_split("test")}
    assert "recorded 'test' split" in note  # not re-derived (the seed given here is wrong on purpose)
    # the data changes: two new films, one test film removed: the new ones count, no train/val film does
    write_image(root / "fractured" / "new_a.png", True, 900)
    write_image(root / "not_fractured" / "new_b.png", False, 901)
    gone = Path(ds.by_split("test")[0].path)
    gone.unlink()
    changed = load_dataset(root)
    chosen, note = select_samples(changed, "auto", {"seed": 3}, data, recorded)
    names = {Path(s.path).name for s in chosen}
    trained = {Path(s.path).name for s in ds.samples if s.split in ("train", "val")}
    assert names.isdisjoint(trained) and {"new_a.png", "new_b.png"} <= names
    assert len(names) == len(ds.by_split("test")) - 1 + 2
    assert "differs" in note and f"{len(trained)} image(s) of its training or validation split left out" in note
    val, _ = select_samples(changed, "val", {}, data, recorded)
    assert {Path(s.path).name for s in val} == {Path(s.path).name for s in ds.by_split("val")}


def test_data_made_only_of_training_images_has_no_test(tmp_path):
    from fracdet.data.layouts import load_dataset
    from fracdet.data.selection import select_samples

    root, ds, recorded = _recorded(tmp_path)
    for s in ds.samples:
        if s.split == "test":
            Path(s.path).unlink()
    with pytest.raises(DatasetError, match="none can be called a test image"):
        select_samples(load_dataset(root), "auto", {}, {"fingerprint": "other"}, recorded)
