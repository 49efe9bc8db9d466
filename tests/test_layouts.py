"""Tests for fracdet.data labels and dataset layouts."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracdet.data import (
    Dataset,
    Sample,
    content_groups,
    detect_layout,
    load_dataset,
    parse_label,
)
from fracdet.errors import DatasetError
from synth import fracatlas_root


def _write_image(path: Path, seed: int) -> Path:
    """Small unique X-ray-like image (bright blob on dark); format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = (rng.random((20, 20)) * 60).astype(np.uint8)
    a[5:15, 8:12] = 220
    Image.fromarray(a, "L").save(path)
    return path


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Fractured", 1), ("fracture", 1), ("FRACTURES", 1), ("positive", 1), ("Abnormal", 1),
        ("1", 1), ("yes", 1), ("True", 1), ("1.0", 1),
        ("not fractured", 0), ("Not_Fractured", 0), ("NON_FRACTURED", 0), ("nonfractured", 0),
        ("non-fracture", 0), ("Normal", 0), ("negative", 0), ("0", 0), ("no", 0), ("false", 0),
        ("unfractured", 0), ("  non__-fractured ", 0), ("non.fractured", 0),
        ("cat", None), ("", None), ("fractured?", None),
    ],
)
def test_parse_label(name: str, label: int | None) -> None:
    assert parse_label(name) == label


def test_class_folders_with_wild_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = {
        "Fractured": 1, "not fractured": 0, "NON_FRACTURED": 0, "Normal": 0,
        "positive": 1, "0": 0, "1": 1,
    }
    for i, name in enumerate(names):
        _write_image(tmp_path / name / f"img{i}.png", i)
    _write_image(tmp_path / "Fractured" / "nested" / "deep.png", 99)
    (tmp_path / "Fractured" / "notes.txt").write_text("x")
    (tmp_path / "Fractured" / ".hidden.png").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(tmp_path)
    assert ds.layout == "class-folders" and not ds.has_splits()
    assert len(ds) == 8 and sum(ds.labels()) == 4
    by_name = {s.path.name: s.label for s in ds.samples}
    for i, name in enumerate(names):
        assert by_name[f"img{i}.png"] == names[name]
    assert "skipped 1 non-image" in caplog.text


@pytest.mark.parametrize("val_name", ["val", "validation", "valid", "dev"])
def test_split_folders(tmp_path: Path, val_name: str) -> None:
    seed = 0
    for split in ["train", val_name, "Test"]:
        for cls in ["fractured", "normal"]:
            for k in range(2):
                seed += 1
                _write_image(tmp_path / split / cls / f"{k}.jpg", seed)
    assert detect_layout(tmp_path) == "split-folders"
    ds = load_dataset(tmp_path)
    assert ds.layout == "split-folders" and ds.has_splits()
    assert {s.split for s in ds.samples} == {"train", "val", "test"}
    assert len(ds.by_split("val")) == 4 == len(ds.by_split(val_name))
    summ = ds.summary()
    assert summ["count"] == 12 and summ["positives"] == 6
    assert summ["splits"]["test"] == {"count": 4, "positives": 2, "negatives": 2}


def test_unknown_class_folder_lists_names(tmp_path: Path) -> None:
    _write_image(tmp_path / "fractured" / "a.png", 1)
    _write_image(tmp_path / "cats" / "b.png", 2)
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path)
    msg = str(info.value)
    assert "cats" in msg and "fractured" in msg and "not fractured" in msg


def test_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "fractured").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="csv manifest"):
        load_dataset(tmp_path / "x.txt")


def test_csv_manifest_and_roundtrip(tmp_path: Path) -> None:
    imgs = [_write_image(tmp_path / "imgs" / f"{i}.png", i) for i in range(4)]
    outside = _write_image(tmp_path.parent / f"{tmp_path.name}_outside.png", 9)
    manifest = tmp_path / "data" / "m.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Path", "label", "group", "split", "region"])
        w.writerow(["../imgs/0.png", "Fractured", "p1", "train", "hand"])
        w.writerow(["../imgs/1.png", "0", "p1", "train", ""])
        w.writerow([str(imgs[2]), "normal", "", "validation", ""])
        w.writerow(["../imgs/3.png", "1", "", "test", "leg"])
        w.writerow([str(outside), "negative", "", "", ""])
    ds = load_dataset(manifest)
    assert ds.layout == "csv" and ds.labels() == [1, 0, 0, 1, 0]
    assert [s.split for s in ds.samples] == ["train", "train", "val", "test", None]
    assert ds.samples[0].group == "p1" and ds.samples[2].group is None
    assert ds.samples[0].path.resolve() == imgs[0].resolve() and ds.samples[0].region == "hand"

    out = tmp_path / "m2.csv"
    ds.to_csv(out)
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["path"] == "imgs/0.png" and Path(rows[4]["path"]).is_absolute()
    again = Dataset.from_csv(out)
    assert [(s.path.resolve(), s.label, s.group, s.split, s.region) for s in again.samples] == [
        (s.path.resolve(), s.label, s.group, s.split, s.region) for s in ds.samples
    ]
    assert not list(tmp_path.glob(".m2.csv.*"))  # temp file replaced


def test_csv_errors(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", 0)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.png,1\n")
    with pytest.raises(DatasetError, match="missing column"):
        load_dataset(bad)
    bad.write_text("path,label\na.png,maybe\n")
    with pytest.raises(DatasetError, match="unrecognised label 'maybe'"):
        load_dataset(bad)
    bad.write_text("path,label\na.png,1\ngone.png,0\n")
    with pytest.raises(DatasetError, match="gone.png"):
        load_dataset(bad)


def _fake_fracatlas(root: Path) -> None:
    header = ["image_id", "hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan",
              "fractured", "fracture_count", "frontal", "lateral", "oblique", "folder_label",
              "dup_group"]
    rows = [
        ("IMG1.jpg", "Fractured", [1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0]),
        ("IMG2.jpg", "Fractured", [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1]),  # csv disagrees
        ("IMG3.jpg", "Non_fractured", [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 2]),
        ("IMG4.jpg", "Non_fractured", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]),
    ]
    for i, (name, folder, _) in enumerate(rows):
        _write_image(root / folder / name, i)
    with open(root / "dataset.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for name, _, vals in rows:
            w.writerow([name, *vals])


def test_fake_fracatlas(tmp_path: Path) -> None:
    _fake_fracatlas(tmp_path)
    assert detect_layout(tmp_path) == "fracatlas"
    with pytest.warns(UserWarning, match="IMG2.jpg"):
        ds = load_dataset(tmp_path)
    s = {x.path.name: x for x in ds.samples}
    assert ds.layout == "fracatlas" and len(ds) == 4
    assert s["IMG2.jpg"].label == 1  # folder wins
    regions = [s[f"IMG{i}.jpg"].region for i in range(1, 5)]
    assert regions == ["hand", "mixed", "leg", None]
    assert s["IMG3.jpg"].group == s["IMG4.jpg"].group == "dup2"
    assert s["IMG1.jpg"].meta["hardware"] == 1 and s["IMG3.jpg"].meta["multiscan"] == 1


def test_content_groups_merges_identical_bytes(tmp_path: Path) -> None:
    a = _write_image(tmp_path / "a.png", 1)
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    c = _write_image(tmp_path / "c.png", 2)
    d = tmp_path / "d.png"
    d.write_bytes(c.read_bytes())
    e = _write_image(tmp_path / "e.png", 3)
    samples = [
        Sample(a, 1, group="g9"), Sample(b, 0, group="g2"), Sample(c, 0), Sample(d, 0), Sample(e, 1)
    ]
    content_groups(samples)
    assert samples[0].group == samples[1].group == "g2"
    assert samples[2].group == samples[3].group and samples[2].group.startswith("sha1-")
    assert samples[4].group is None


@pytest.mark.skipif(fracatlas_root() is None, reason="FracAtlas data not present")
def test_real_fracatlas() -> None:
    root = fracatlas_root()
    assert root is not None
    with pytest.warns(UserWarning, match="IMG0003298.jpg"):
        ds = load_dataset(root)
    assert ds.layout == "fracatlas" and len(ds) == 3264
    assert sum(ds.labels()) == 572 == len(list((root / "Fractured").glob("*.jpg")))
    assert all(s.group is not None for s in ds.samples)
    assert {s.region for s in ds.samples} <= {"hand", "leg", "hip", "shoulder", "mixed", None}
