"""Predict throughput of a model on a folder of images, end to end (decode → verdict).

    python benchmarks/predict_throughput.py [--model M] [--n 500] [--data ../shared/data/fracatlas]

Prints images/s and the time split between decoding+preprocessing and the network.  Uses
FracAtlas JPEGs when present, else generates synthetic 1024×819 JPEGs.  Not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fracdet.io.images import iter_image_files, read_image
from fracdet.inference import load_model


def _images(data: Path, n: int) -> list[Path]:
    if data.is_dir():
        files = list(iter_image_files([data]))
        if files:
            return (files * (n // len(files) + 1))[:n]
    tmp = Path(tempfile.mkdtemp(prefix="fracdet-bench-"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(min(n, 64)):
        p = tmp / f"synthetic_{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (1024, 819), dtype=np.uint8)).save(p, quality=92)
        out.append(p)
    return (out * (n // len(out) + 1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/fracatlas"))
    a = ap.parse_args()
    files = _images(Path(a.data), a.n)
    t0 = time.perf_counter()
    predictor = load_model(a.model)
    t_load = time.perf_counter() - t0
    predictor.predict(files[0])  # warm-up
    t0 = time.perf_counter()
    rows = list(predictor.predict_paths(files, batch_size=a.batch_size))
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = predictor.artifact.preprocess.input_size
    for f in files[: min(200, len(files))]:
        predictor.transform(read_image(f, min_size=size).pixels)
    decode = (time.perf_counter() - t0) / min(200, len(files))
    x = torch.randn(a.batch_size, 3, size, size)
    predictor.logits(x)
    t0 = time.perf_counter()
    for _ in range(3):
        predictor.logits(x)
    net = (time.perf_counter() - t0) / (3 * a.batch_size)
    print(f"model                 {predictor.artifact.architecture} @ {size}px, torch threads {torch.get_num_threads()}")
    print(f"images                {len(rows)} ({sum(not r.ok for r in rows)} errors)")
    print(f"load model            {t_load:.2f} s")
    print(f"end to end            {len(rows) / total:.1f} images/s ({total:.1f} s)")
    print(f"decode+preprocess     {1 / decode:.1f} images/s (single thread)")
    print(f"network only          {1 / net:.1f} images/s (batch {a.batch_size})")


if __name__ == "__main__":
    main()
