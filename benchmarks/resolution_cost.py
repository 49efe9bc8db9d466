"""What the input size costs on this CPU: the default model's network exported at each size.

    python benchmarks/resolution_cost.py [--sizes 224,288,320,384] [--seconds 4] [--n-ref 1000] [--n-read 200]

The default model (EfficientNet-Lite0 with its map head) is fully convolutional, so its weights
run at any input size. For each size S this exports its float32 graph at S (as ``fracdet``
does), quantizes a copy to int8 with ``fracdet quantize``'s scheme (ranges from 32 training
films at S; only its speed is of interest here, not its drift), and times:

- reading: decode at the size the model needs (JPEG draft), grey, letterbox to S, one thread
  (what ``predict``'s reader thread does), over FracAtlas films;
- the graph alone on a ready batch of 8, float32 and int8, onnxruntime on all cores;

beside the ResNet-50 reference of ``benchmarks/bench.py`` (eager PyTorch, full decode, 224 px;
bench's own subprocess, in the ``fracdet`` command's environment) in the same run, and prints
each as a multiple of the reference.  Reading runs on another thread than the graph in
``predict``, but both share the same cores, so the end-to-end rate is at most the graph's.  Needs ../shared/data/fracatlas.  Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRACATLAS = REPO.parent / "shared" / "data" / "fracatlas"


def _rate(run, x: np.ndarray, seconds: float) -> float:
    run(x)  # warm
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="224,288,320,384")
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per graph")
    ap.add_argument("--n-ref", type=int, default=1000, help="films for the reference (bench.py's N)")
    ap.add_argument("--n-read", type=int, default=200, help="films for the reading stage")
    a = ap.parse_args()
    if not FRACATLAS.is_dir():
        sys.exit(f"error: {FRACATLAS}: FracAtlas not found")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench import _run

    from fracdet.artifact import load_artifact
    from fracdet.cpu import cpu_model, cpu_summary
    from fracdet.data import load_dataset
    from fracdet.inference.onnx import OnnxRunner
    from fracdet.io.images import read_image
    from fracdet.models.export import build_model, onnx_bytes
    from fracdet.quantize import quantize_onnx
    from fracdet.transforms import build_transforms

    art = load_artifact()
    model = build_model(art)
    films = load_dataset(FRACATLAS).samples  # speed only: which films does not matter
    calibration = films[::97][:32]
    files = [films[int(i)].path for i in np.linspace(0, len(films) - 1, min(a.n_read, len(films)))]
    ref = _run("reference", str(a.n_ref))  # a subprocess in the `fracdet` command's environment (tcmalloc when installed)
    ref_rate = ref["images"] / ref["seconds"]
    print(f"# input size and speed — {cpu_model()}, int8 kernels {cpu_summary()['kernel_class']}; reference "
          f"(ResNet-50, eager, 224 px, end to end) {ref_rate:.1f} images/s; default model "
          f"{art.architecture} at {art.preprocess.input_size} px\n")
    print("| input | reading, 1 thread | float32 graph | int8 graph | float32 graph ÷ reference | "
          "int8 graph ÷ reference |\n|---|---|---|---|---|---|")
    for size in [int(s) for s in a.sizes.split(",")]:
        spec = dataclasses.replace(art.preprocess, input_size=size)
        tf = build_transforms(spec)
        t0 = time.perf_counter()
        batch = np.stack([tf(read_image(f, min_size=size).pixels) for f in files])
        reading = len(files) / (time.perf_counter() - t0)
        fp32 = onnx_bytes(model, size, check=False)
        int8 = quantize_onnx(fp32, calibration, tf)
        x = np.ascontiguousarray(batch[:8], dtype=np.float32)
        rates = [_rate(OnnxRunner(g).run, x, a.seconds) for g in (fp32, int8)]
        print(f"| {size} px | {reading:.0f} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[0] / ref_rate:.1f}× | "
              f"{rates[1] / ref_rate:.1f}× |")


if __name__ == "__main__":
    main()
