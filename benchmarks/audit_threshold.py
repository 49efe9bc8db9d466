"""Measure the near-duplicate thresholds of ``fracdet audit`` on FracAtlas.

Two distributions of perceptual-hash distances (64-bit phash, best of the 8 rotations/flips;
256-bit phash under that same rotation/flip):

* **true copies**: N FracAtlas radiographs, each copied the ways the public datasets copy
  them (rescaled, re-encoded at low JPEG quality, cropped, brightness-shifted, rotated
  90/180/270°, flipped, and combinations), distance copy ↔ original;
* **distinct radiographs**: all pairs of FracAtlas files that are *not* in the same
  ``dup_group`` and not pixel-identical (≈5.3 million pairs).

Also shown, for information: pairs that FracAtlas itself lists as one ``dup_group``.

    .venv/bin/python benchmarks/audit_threshold.py [--n 150] [--root ../shared/data/fracatlas]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from fracdet.data.audit import FINE_THRESHOLD, NEAR_THRESHOLD, _hash_arrays
from fracdet.data.hashing import HashCache, _quiet_reads, fingerprint_file, fingerprint_files
from fracdet.io.images import read_image

ROOT = Path(__file__).resolve().parents[2] / "shared/data/fracatlas"


def copies(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    c = max(1, int(0.03 * min(w, h)))

    def jpeg(x: Image.Image, q: int) -> Image.Image:
        buf = io.BytesIO()
        x.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("L")

    return {
        "rescale_0.5": im.resize((w // 2, h // 2), Image.BILINEAR),
        "rescale_0.3": im.resize((int(w * 0.3), int(h * 0.3)), Image.BICUBIC),
        "jpeg_q40": jpeg(im, 40),
        "crop_1pct_each_side": im.crop((max(1, c // 3), max(1, c // 3), w - max(1, c // 3), h - max(1, c // 3))),
        "crop_3pct_each_side": im.crop((c, c, w - c, h - c)),
        "crop_5pct_one_corner": im.crop((int(0.05 * w), int(0.05 * h), w, h)),
        "brightness_+15pct": ImageEnhance.Brightness(im).enhance(1.15),
        "contrast_0.8": ImageEnhance.Contrast(im).enhance(0.8),
        "rot90": im.transpose(Image.Transpose.ROTATE_90),
        "rot180": im.transpose(Image.Transpose.ROTATE_180),
        "rot270": im.transpose(Image.Transpose.ROTATE_270),
        "hflip": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "vflip": im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "rot90+rescale0.6+jpeg60": jpeg(im.transpose(Image.Transpose.ROTATE_90).resize(
            (int(h * 0.6), int(w * 0.6)), Image.BILINEAR), 60),
        "hflip+crop3+bright": ImageEnhance.Brightness(
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((c, c, w - c, h - c))).enhance(0.9),
    }


def pair_distance(a: dict, b: dict) -> tuple[int, int]:
    """(d64 best over b's 8 variants, d256 under that variant) — as the audit computes it."""
    a64, a256 = _hash_arrays([a])
    b64, b256 = _hash_arrays([b])
    d64 = np.bitwise_count(a64[0, 0] ^ b64[0])
    d256 = np.bitwise_count(a256[0, 0] ^ b256[0]).sum(axis=1)
    k = int(np.lexsort((d256, d64))[0])
    return int(d64[k]), int(d256[k])


def pct(v: np.ndarray, qs: tuple[float, ...]) -> str:
    return "  ".join(f"p{q:g}={np.percentile(v, q):.0f}" for q in qs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--n", type=int, default=150, help="radiographs to copy")
    args = ap.parse_args()
    if not (args.root / "dataset.csv").is_file():
        print(f"FracAtlas not found at {args.root}", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(args.root / "dataset.csv", newline="")))
    folder = {"1": "Fractured", "0": "Non_fractured"}
    paths = [args.root / folder[r["folder_label"]] / r["image_id"] for r in rows]
    dup = np.array([int(r["dup_group"]) if r["dup_group"] != "" else -1 - i for i, r in enumerate(rows)])

    t = time.perf_counter()
    recs, hits = fingerprint_files(paths, HashCache(), progress=sys.stderr.isatty())
    print(f"fingerprints: {len(recs)} files ({hits} cached) in {time.perf_counter() - t:.1f}s")
    ok = np.array([r["ok"] for r in recs])
    idx = np.nonzero(ok)[0]
    h64, h256 = _hash_arrays([recs[i] for i in idx])
    pix = np.array([recs[i]["pixel"] for i in idx])
    dg = dup[idx]

    # distinct pairs: min over the 8 variants of d64; d256 under the best variant
    n = len(idx)
    hist64 = np.zeros(65, dtype=np.int64)
    low: list[tuple[int, int]] = []
    low_pairs_detail: list[tuple[int, int, int, int]] = []
    same_group: list[tuple[int, int]] = []
    for s in range(0, n, 64):
        e = min(n, s + 64)
        d = np.bitwise_count(h64[s:e, None, 0:1] ^ h64[None, :, :])  # (c, n, 8)
        k = d.argmin(axis=2)
        dmin = d.min(axis=2)
        ii, jj = np.nonzero(np.triu(np.ones((e - s, n), bool), k=s + 1))
        d_ij = dmin[ii, jj]
        i_abs = ii + s
        distinct = (dg[i_abs] != dg[jj]) & (pix[i_abs] != pix[jj])
        hist64 += np.bincount(d_ij[distinct], minlength=65)
        sel = np.nonzero(distinct & (d_ij <= 20))[0]
        for a, b in zip(i_abs[sel], jj[sel]):
            kk = k[a - s, b]
            low.append((int(dmin[a - s, b]), int(np.bitwise_count(h256[a, 0] ^ h256[b, kk]).sum())))
            if low[-1][0] <= NEAR_THRESHOLD:
                low_pairs_detail.append((*low[-1], int(a), int(b)))
        sg = np.nonzero(dg[i_abs] == dg[jj])[0]
        for a, b in zip(i_abs[sg], jj[sg]):
            kk = k[a - s, b]
            same_group.append((int(dmin[a - s, b]), int(np.bitwise_count(h256[a, 0] ^ h256[b, kk]).sum())))

    total = int(hist64.sum())
    print(f"\nDISTINCT radiographs: {total:,} pairs (different dup_group, different pixels)")
    cum = np.cumsum(hist64)
    for d in (0, 2, 4, 6, 8, 10, 12, 14, 16, 20):
        print(f"  d64 <= {d:>2}: {int(cum[d]):>7,} pairs")
    print(f"  d64 median {int(np.searchsorted(cum, total / 2))}")
    low_a = np.array(low) if low else np.zeros((0, 2), int)
    for t64 in (8, 10, 12, 14):
        cand = low_a[low_a[:, 0] <= t64]
        if len(cand):
            print(f"  d64 <= {t64}: {len(cand)} candidate pairs; their d256: min {cand[:, 1].min()}, "
                  f"{pct(cand[:, 1], (1, 5, 50))}; with d256 <= {FINE_THRESHOLD}: "
                  f"{int((cand[:, 1] <= FINE_THRESHOLD).sum())}")

    sg = np.array(same_group)
    if len(sg):
        print(f"\nFracAtlas dup_group pairs: {len(sg)}; d64 {pct(sg[:, 0], (50, 90, 100))}; "
              f"d256 {pct(sg[:, 1], (50, 90, 100))}; found at ({NEAR_THRESHOLD}, {FINE_THRESHOLD}) or "
              f"pixel-identical: {int(((sg[:, 0] <= NEAR_THRESHOLD) & (sg[:, 1] <= FINE_THRESHOLD)).sum())}")

        for t256 in (12, 16, 20, 24, 32):
            print(f"    d256 <= {t256}: dup_group pairs found {int(((sg[:, 0] <= NEAR_THRESHOLD) & (sg[:, 1] <= t256)).sum())}"
                  f"/{len(sg)}; distinct pairs flagged {int(((low_a[:, 0] <= NEAR_THRESHOLD) & (low_a[:, 1] <= t256)).sum())}")

    rng = np.random.default_rng(0)
    chosen = rng.choice(idx, size=min(args.n, len(idx)), replace=False)
    dist: dict[str, list[tuple[int, int]]] = {}
    low_pairs = sorted(low_pairs_detail, key=lambda x: x[1])[:12]
    print("  closest distinct pairs (d64, d256, a, b):")
    for d64, d256, a, b in low_pairs:
        print(f"    {d64:>2} {d256:>3}  {paths[idx[a]].name} {paths[idx[b]].name}")
    with _quiet_reads(), tempfile.TemporaryDirectory() as tmp:
        for c, i in enumerate(chosen):
            im = Image.fromarray((read_image(paths[i]).pixels * 255 + 0.5).astype(np.uint8))
            for name, cp in copies(im).items():
                f = Path(tmp) / f"{c}_{name}.png"
                cp.save(f)
                dist.setdefault(name, []).append(pair_distance(recs[i], fingerprint_file(f)))
                f.unlink()
    print(f"\nTRUE COPIES of {len(chosen)} radiographs (d64 best of 8 / d256 same variant):")
    all_c = []
    for name, v in dist.items():
        a = np.array(v)
        all_c.append(a)
        found = int(((a[:, 0] <= NEAR_THRESHOLD) & (a[:, 1] <= FINE_THRESHOLD)).sum())
        print(f"  {name:<26} d64 max {a[:, 0].max():>2} p95 {np.percentile(a[:, 0], 95):>4.0f} | "
              f"d256 max {a[:, 1].max():>3} p95 {np.percentile(a[:, 1], 95):>4.0f} | found {found}/{len(a)}")
    a = np.concatenate(all_c)
    for t256 in (12, 16, 20, 24, 32):
        print(f"  d256 <= {t256}: found " + ", ".join(
            f"{name} {int(((np.array(v)[:, 0] <= NEAR_THRESHOLD) & (np.array(v)[:, 1] <= t256)).sum())}"
            for name, v in dist.items() if "crop" in name))
    print(f"  all: d64 {pct(a[:, 0], (50, 95, 99, 100))}; d256 {pct(a[:, 1], (50, 95, 99, 100))}")
    print(f"\nthresholds in use: d64 <= {NEAR_THRESHOLD} and d256 <= {FINE_THRESHOLD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
