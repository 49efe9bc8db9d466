"""How much a model's probabilities move under changes a reader cannot see — next to int8.

    python benchmarks/noise_sensitivity.py [--model MODEL] [--split val]  (choose on validation; the test split is touched once, at the end)

On the FracAtlas split the model was trained with (re-derived from the artifact), prints the
mean and 99th-percentile absolute change of the calibrated probability when uniform noise of
±0.5, ±1 and ±4 grey levels (of 255) is added to the image (the same in all three input
channels, the letterbox border left black), and when the float32 network is replaced by the
artifact's int8 graph.  A robust model moves little under ±0.5 grey level (below what an 8-bit
image can even store).  Needs ../shared/data/fracatlas.  Not a test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="artifact (default: the shipped model)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data", default=str(FRACATLAS))
    a = ap.parse_args()

    from fracdet.artifact import load_artifact
    from fracdet.calibration import calibrated_probability
    from fracdet.data.layouts import load_dataset
    from fracdet.data.loader import make_loader
    from fracdet.data.selection import select_samples
    from fracdet.inference.onnx import OnnxRunner
    from fracdet.models.export import onnx_bytes
    from fracdet.transforms import build_transforms

    art = load_artifact(a.model)
    samples, note = select_samples(load_dataset(a.data), a.split, art.training, art.data, art.recorded_split())
    x = np.concatenate([b.numpy() for b, _, _ in make_loader(samples, build_transforms(art.preprocess), 32)])
    fp32 = OnnxRunner(onnx_bytes(art.build_model(), art.preprocess.input_size))

    def prob(runner: OnnxRunner, inputs: np.ndarray) -> np.ndarray:
        z = np.concatenate([runner(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
        return calibrated_probability(z, art.temperature)

    ref = prob(fp32, x)
    border = x == x.min()  # the letterbox padding (black)
    std = float(np.mean(art.preprocess.std))
    print(f"{len(x)} images: {note}\n\n| change | mean abs Δp | p99 abs Δp |\n|---|---|---|")
    rng = np.random.default_rng(0)
    for grey in (0.5, 1.0, 4.0):
        noise = rng.uniform(-grey / 255, grey / 255, (x.shape[0], 1) + x.shape[2:]).astype(np.float32) / std
        d = np.abs(prob(fp32, np.where(border, x, x + noise).astype(np.float32)) - ref)
        print(f"| uniform noise ±{grey:g}/255 | {d.mean():.3f} | {np.quantile(d, 0.99):.3f} |")
    if art.int8_onnx:
        d = np.abs(prob(OnnxRunner(art.int8_onnx), x) - ref)
        print(f"| int8 instead of float32 | {d.mean():.3f} | {np.quantile(d, 0.99):.3f} |")


if __name__ == "__main__":
    main()
