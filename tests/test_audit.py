"""fracdet audit: planted duplicates of every kind, leakage, label conflicts, bad files; splits;
the training refusal; FracAtlas' own problems when the data is present."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from fracdet.cli import main
from fracdet.data import load_dataset
from fracdet.data.audit import audit, audit_split, cross_duplicates, near_pairs
from fracdet.data.hashing import _phash_ints, fingerprint_file
from fracdet.errors import DatasetError
from synth import fracatlas_root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FRACDET_CACHE", str(tmp_path / "cache"))


def radiograph(seed: int, size: tuple[int, int] = (128, 112)) -> Image.Image:
    """A distinct synthetic film: several bright 'bones' of random position, angle and width."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = rng.normal(25, 4, size=(h, w))
    for _ in range(rng.integers(3, 6)):
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        ang = rng.uniform(0, np.pi)
        d = np.abs((xx - cx) * np.sin(ang) - (yy - cy) * np.cos(ang))
        along = np.abs((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang))
        img += rng.uniform(80, 180) * ((d < rng.uniform(4, 12)) & (along < rng.uniform(20, 60)))
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 20)
        img += rng.uniform(20, 60) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


COPIES = {
    "exact": None,  # same bytes
    "pixel": ".bmp",  # same pixels, other bytes
    "rescaled": lambda im: im.resize((im.width * 3 // 5, im.height * 3 // 5), Image.BILINEAR),
    "jpeg_q50": "jpeg",
    "cropped": lambda im: im.crop((1, 1, im.width - 1, im.height - 1)),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rot180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rot270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "vflip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
}


def make_leaky(root: Path, n_distinct: int = 24) -> dict:
    """Split folders with distinct films, planted copies in test of train films (one per kind),
    planted label conflicts and corrupt files. Returns what was planted."""
    planted: dict = {"leaks": {}, "conflicts": [], "distinct": []}
    for i in range(n_distinct):
        split = ("train", "val", "test")[i % 3]
        cls = ("fractured", "not_fractured")[(i // 3) % 2]
        p = _save(radiograph(i), root / split / cls / f"d{i:03d}.png")
        planted["distinct"].append(p)
    for k, (kind, how) in enumerate(COPIES.items()):
        src_im = radiograph(1000 + k)
        src = _save(src_im, root / "train" / "fractured" / f"orig_{kind}.png")
        if how is None:
            dst = root / "test" / "fractured" / f"copy_{kind}.png"
            dst.write_bytes(src.read_bytes())
        elif how == ".bmp":
            dst = _save(src_im, root / "test" / "fractured" / f"copy_{kind}.bmp")
        elif how == "jpeg":
            dst = _save(src_im, root / "test" / "fractured" / f"copy_{kind}.jpg", quality=50)
        else:
            dst = _save(how(src_im), root / "test" / "fractured" / f"copy_{kind}.png")
        planted["leaks"][kind] = (src, dst)
    # label conflicts: a pixel copy and a rotated copy filed under the other class (same split)
    for k, how in enumerate((lambda im: im, lambda im: im.transpose(Image.Transpose.ROTATE_90))):
        im = radiograph(2000 + k)
        a = _save(im, root / "val" / "fractured" / f"conf{k}_a.png")
        b = _save(how(im), root / "val" / "not_fractured" / f"conf{k}_b.png")
        planted["conflicts"].append({a, b})
    bad = root / "train" / "not_fractured"
    good = _save(radiograph(3000), bad / "truncated.jpg", quality=90)
    data = good.read_bytes()
    good.write_bytes(data[: int(len(data) * 0.6)])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is not an image\n")
    _save(Image.new("L", (8, 8), 100), bad / "tiny.png")
    _save(radiograph(3001, (40, 48)), bad / "small.png")
    (bad / "readme.docx").write_bytes(b"PK\x03\x04 not relevant")
    planted["truncated"] = good
    return planted


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaky") / "data"
    return root, make_leaky(root)


def _groups_by_path(report) -> dict[str, set[str]]:
    out = {}
    for g in report.groups:
        paths = {str(report.samples[i].path) for i in g.members}
        for p in paths:
            out[p] = paths
    return out


def test_phash_matches_imagehash():
    import imagehash

    rng = np.random.default_rng(1)
    for hs in (8, 16):
        thumbs = rng.integers(0, 256, (4, 4 * hs, 4 * hs)).astype(np.uint8)
        ours = _phash_ints(thumbs, hs)
        ref = [int(str(imagehash.phash(Image.fromarray(t), hash_size=hs)), 16) for t in thumbs]
        assert ours == ref


def test_audit_finds_every_planted_leak_and_conflict_and_nothing_else(leaky):
    root, planted = leaky
    report = audit(root)
    by_path = _groups_by_path(report)
    for kind, (src, dst) in planted["leaks"].items():
        assert str(dst) in by_path.get(str(src), set()), f"planted {kind} copy not found"
    for g in report.groups:
        if any(str(report.samples[i].path).endswith("orig_exact.png") for i in g.members):
            assert "exact" in g.kinds
        if any(str(report.samples[i].path).endswith("copy_pixel.bmp") for i in g.members):
            assert "pixel" in g.kinds
    leaking = {frozenset(str(report.samples[i].path) for i in g.members) for g in report.leaking}
    assert leaking == {frozenset({str(s), str(d)}) for s, d in planted["leaks"].values()}
    conflicts = {frozenset(str(report.samples[i].path) for i in g.members) for g in report.conflicts}
    assert conflicts == {frozenset(str(p) for p in c) for c in planted["conflicts"]}
    for p in planted["distinct"]:
        assert str(p) not in by_path, f"distinct image {p} flagged as a duplicate"
    c = report.counts()
    assert c["duplicate_groups"] == len(COPIES) + 2
    kinds = {Path(f["error"].split(":")[0]).name: f["error_kind"] for f in report.unreadable}
    assert kinds == {"empty.png": "empty", "notes.jpg": "not_image", "tiny.png": "too_small"}
    assert c["truncated"] == 1 and c["too_small"] == 2 and c["non_image_files"] == 1
    assert report.failures(["leakage", "conflict", "unreadable"]) == ["leakage", "conflict", "unreadable"]
    assert report.stats()["class_balance"]["test"]["fractured"] >= len(COPIES)


def test_cli_audit_exit_status_json_and_cache(leaky, tmp_path, capsys):
    root, _ = leaky
    out = tmp_path / "a.json"
    assert main(["audit", str(root), "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "groups crossing splits" in text and "worst offenders" in text and "copy_brighter.png" in text
    rep = json.loads(out.read_text())
    assert rep["counts"]["leaking_groups"] == len(COPIES) and rep["counts"]["conflict_groups"] == 2
    assert len(rep["files"]) == rep["counts"]["files"] and all("members" in g for g in rep["groups"])
    assert main(["audit", str(root), "--json", str(out), "--fail-on", "none"]) == 0
    assert json.loads(out.read_text())["timing"]["cached_files"] == rep["counts"]["readable"]
    assert main(["audit", str(root), "--json", "", "--fail-on", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_split_keeps_groups_together_and_excludes_conflicts(leaky, tmp_path, capsys):
    root, planted = leaky
    out = tmp_path / "split.csv"
    assert main(["split", str(root), "--out", str(out)]) == 2  # given splits leak
    assert "--merge" in capsys.readouterr().err
    assert main(["split", str(root), "--out", str(out), "--merge"]) == 0
    rows = list(csv.DictReader(out.open()))
    split_of = {str((out.parent / r["path"]).resolve()): r for r in rows}
    for src, dst in planted["leaks"].values():
        a, b = split_of[str(src.resolve())], split_of[str(dst.resolve())]
        assert a["split"] == b["split"] and a["group"] and a["group"] == b["group"]
    conflict_files = {str(p.resolve()) for c in planted["conflicts"] for p in c}
    assert not conflict_files & set(split_of)
    ds = load_dataset(out)
    assert {s.split for s in ds.samples} == {"train", "val", "test"}
    assert main(["split", str(root), "--out", str(out), "--merge", "--conflicts", "keep"]) == 0
    assert conflict_files <= {str((out.parent / r["path"]).resolve()) for r in csv.DictReader(out.open())}


def test_audit_split_on_unsplit_data_and_cross_duplicates(tmp_path):
    root = tmp_path / "cf"
    for i in range(20):
        _save(radiograph(i), root / ("fractured" if i % 2 else "normal") / f"{i}.png")
    _save(radiograph(3).transpose(Image.Transpose.ROTATE_270), root / "fractured" / "3rot.png")
    _save(radiograph(4).transpose(Image.Transpose.ROTATE_90), root / "fractured" / "4rot.png")  # conflict
    ds = load_dataset(root)
    out, report, excluded = audit_split(ds, seed=3)
    assert {Path(s.path).name for s in excluded} == {"4.png", "4rot.png"}
    split = {Path(s.path).name: s.split for s in out.samples}
    assert split["3.png"] == split["3rot.png"]
    # evaluation-side dedupe: query copies of reference images are found, distinct ones not
    q = [s for s in ds.samples if Path(s.path).name in ("3rot.png", "5.png")]
    r = [s for s in ds.samples if Path(s.path).name in ("3.png", "7.png", "9.png")]
    found = cross_duplicates(q, r)
    assert [Path(q[i].path).name for i in found] == ["3rot.png"]


def test_near_pairs_chunking_is_exact(tmp_path):
    recs = [fingerprint_file(_save(radiograph(i % 7).rotate(0), tmp_path / f"{i}.png")) for i in range(14)]
    full = near_pairs(recs)
    tiny = near_pairs(recs, budget=1)
    assert full == tiny and len(full) == 7


def test_train_refuses_leaky_splits(leaky, tmp_path):
    from fracdet.config import TrainConfig
    from fracdet.train import prepare_data

    root, _ = leaky
    cfg = TrainConfig(data=str(root), progress=False)
    with pytest.raises(DatasetError, match="allow-leakage"):
        prepare_data(cfg)
    cfg.allow_leakage = True
    ds = prepare_data(cfg)
    assert ds.audit_summary["audit"]["allow_leakage"] and ds.audit_summary["audit"]["leakage_in_given_splits"]
    cfg = TrainConfig(data=str(root), progress=False, resplit=True)
    ds = prepare_data(cfg)
    assert ds.audit_summary["audit"]["excluded_conflict_files"] == 4


@pytest.mark.slow
def test_fracatlas_audit():
    root = fracatlas_root()
    if root is None:
        pytest.skip("FracAtlas not present")
    t = time.perf_counter()
    report = audit(root)
    c = report.counts()
    assert c["conflict_groups"] >= 3
    for g in report.conflicts:
        assert {report.samples[i].label for i in g.members} == {0, 1}
    assert c["truncated"] >= 1
    assert any(Path(d["path"]).name == "IMG0003298.jpg" for d in report.disagreements)
    assert c["exact_groups"] >= 1 and c["pixel_groups"] >= 1
    # the cached second run is near-instant
    t = time.perf_counter()
    again = audit(root)
    assert again.timing["cached_files"] == c["readable"] and time.perf_counter() - t < 10
