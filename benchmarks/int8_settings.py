"""Which int8 quantization settings keep a model's probabilities closest to float32.

    python benchmarks/int8_settings.py [DATA] [--model MODEL] [--split val] [--schemes a,b]
                                       [--limit N] [--export DIR]
    python benchmarks/int8_settings.py --replay DIR [--label NAME]

Quantizes the model's float32 graph with each scheme (calibrated, as ``fracdet quantize``
does, on up to 256 images of the model's train split) and prints, per scheme, how far the
int8 probabilities are from float32 on the chosen split (default ``val``: never choose on
the test split): mean / p99 / max |Δp|, the share of images whose label at the artifact's
threshold stays the same, AUROC in float32 and int8, and the int8 network's throughput.  The
numbers are those of *this* CPU's onnxruntime int8 kernels (see ``fracdet.cpu``): the row
header says which.

``--export DIR`` also writes the prepared check images, float32 logits and every int8 graph,
so that ``--replay DIR`` can re-run the int8 graphs elsewhere with numpy and onnxruntime only
(no PyTorch) — e.g. under an emulated AVX2-only CPU, where onnxruntime takes its
saturating-int16 kernels::

    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/int8_settings.py --replay DIR --label "avx2 (qemu Haswell)"

Needs ../shared/data/fracatlas (or DATA).  Not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"

# keyword arguments of onnxruntime's quantize_static that every scheme starts from (fracdet's
# scheme up to 0.1; ``float_image_convs`` is fracdet's own: keep the image's convolution in
# float32), so that the table does not move with fracdet.quantize's choice
BASE: dict[str, Any] = {"quant_format": "QOperator", "activation_type": "QUInt8", "weight_type": "QInt8",
                        "per_channel": True, "reduce_range": False, "calibrate_method": "MinMax",
                        "float_image_convs": False}
# node names in EfficientNet-Lite0's exported graph (``nodes_to_exclude`` keeps them in float32)
STEM, HEAD = "/conv_stem/conv_stem.1/Conv", ("/head/head.0/Gemm", "/head/head.3/Gemm")
# name → (description, changes to BASE)
SCHEMES: dict[str, tuple[str, dict[str, Any]]] = {
    "qop-minmax": ("QOperator, u8 act., per-channel s8 weights, MinMax (fracdet's earlier scheme)", {}),
    "qop-minmax-rr": ("same, reduce_range (7-bit weights)", {"reduce_range": True}),
    "qdq-minmax": ("QDQ, u8 act., per-channel s8 weights, MinMax", {"quant_format": "QDQ"}),
    "qdq-minmax-rr": ("QDQ, reduce_range", {"quant_format": "QDQ", "reduce_range": True}),
    "qop-pct-rr": ("QOperator, reduce_range, Percentile 99.999 ranges",
                   {"reduce_range": True, "calibrate_method": "Percentile",
                    "extra_options": {"CalibPercentile": 99.999}}),
    "qop-minmax-rr-actsym": ("QOperator, reduce_range, symmetric u8 activations",
                             {"reduce_range": True, "extra_options": {"ActivationSymmetric": True}}),
    "qop-u8w": ("QOperator, per-channel u8 weights (symmetric, zero point 128: onnxruntime runs them as s8, "
                "same kernels and numbers)", {"weight_type": "QUInt8"}),
    "qop-minmax-fpstem": ("QOperator, s8 weights, the image's convolution left in float32 (fracdet's scheme)",
                          {"float_image_convs": True}),
    "qop-minmax-rr-fpstem": ("same, reduce_range", {"reduce_range": True, "float_image_convs": True}),
    "qop-minmax-fpstem-fpdw": ("QOperator, s8 weights, the image's and the depthwise convolutions in float32",
                               {"float_image_convs": True, "float_depthwise_convs": True}),
    "qop-u8w-fpstem": ("QOperator, u8 weights, stem in float32", {"weight_type": "QUInt8", "float_image_convs": True}),
    "qop-minmax-fpends": ("QOperator, s8 weights, stem and classifier head in float32",
                          {"nodes_to_exclude": [STEM, *HEAD]}),
    "qop-entropy-rr": ("QOperator, reduce_range, Entropy ranges (slow)",
                       {"reduce_range": True, "calibrate_method": "Entropy"}),
}
DEFAULT_SCHEMES = ("qop-minmax,qop-minmax-rr,qdq-minmax,qop-pct-rr,qop-minmax-rr-actsym,qop-minmax-fpstem,"
                   "qop-minmax-rr-fpstem,qop-minmax-fpends")


def _settings(raw: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **raw}  # enum names: fracdet.quantize.quantize_onnx resolves them


def _sigmoid(z: np.ndarray, temperature: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64) / temperature))


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def _stats(pa: np.ndarray, pb: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    d = np.abs(pa - pb)
    return {"n": int(len(d)), "mean": float(d.mean()), "p99": float(np.quantile(d, 0.99)), "max": float(d.max()),
            "agree": float(np.mean((pa >= threshold) == (pb >= threshold))),
            "auroc_fp32": _auroc(y, pa), "auroc_int8": _auroc(y, pb)}


def _run(session_bytes: bytes, x: np.ndarray, threads: int, batch: int = 16) -> tuple[np.ndarray, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(session_bytes, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch]})  # warm-up, not timed
    t = time.perf_counter()
    z = np.concatenate([np.asarray(sess.run(None, {name: x[i:i + batch]})[0], dtype=np.float32).reshape(-1)
                        for i in range(0, len(x), batch)])
    return z, len(x) / (time.perf_counter() - t)


def _table(title: str, rows: list[tuple[str, dict[str, float], float]], extra: str = "") -> None:
    print(f"\n{title}\n")
    print("| scheme | n | mean abs Δp | p99 abs Δp | max abs Δp | same label | AUROC fp32 | AUROC int8 "
          f"| int8 images/s |{extra and ' ' + extra + ' |'}")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""))
    for name, s, speed, *more in rows:
        print(f"| {name} | {s['n']} | {s['mean']:.4f} | {s['p99']:.4f} | {s['max']:.4f} | {100 * s['agree']:.1f}% "
              f"| {s['auroc_fp32']:.4f} | {s['auroc_int8']:.4f} | {speed:.0f} |"
              + "".join(f" {m} |" for m in more))


def measure(a: argparse.Namespace) -> None:
    import torch

    from fracdet.artifact import load_artifact
    from fracdet.cpu import cpu_summary
    from fracdet.data.layouts import load_dataset
    from fracdet.data.loader import make_loader
    from fracdet.data.selection import select_samples
    from fracdet.quantize import _float32_onnx, calibration_subset, quantize_onnx
    from fracdet.transforms import build_transforms

    art = load_artifact(a.model)
    ds = load_dataset(a.data)
    check, note = select_samples(ds, a.split, art.training, art.data, art.recorded_split())
    calibration = calibration_subset(select_samples(ds, "train", art.training, art.data, art.recorded_split())[0], a.seed)
    if a.limit and a.limit < len(check):  # evenly spaced, so both classes stay in
        check = [check[i] for i in np.linspace(0, len(check) - 1, a.limit).round().astype(int)]
    transform = build_transforms(art.preprocess)
    batches = [(x.numpy(), y.numpy()) for x, y, _ in make_loader(check, transform, batch_size=32) if len(x)]
    x = np.ascontiguousarray(np.concatenate([b[0] for b in batches]), dtype=np.float32)
    y = np.concatenate([b[1] for b in batches]).astype(int)
    fp32 = _float32_onnx(art)
    threads = a.threads or torch.get_num_threads()
    z32, speed32 = _run(fp32, x, threads)
    p32 = _sigmoid(z32, art.temperature)
    cpu = cpu_summary()
    print(f"{len(y)} images ({int(y.sum())} fractured): {note}; calibration: {len(calibration)} train-split images")
    print(f"CPU: {cpu['cpu']}, onnxruntime int8 kernel class {cpu['kernel_class']} (flags {' '.join(cpu['flags'])}); "
          f"float32 {speed32:.0f} images/s, {threads} threads")
    out = Path(a.export) if a.export else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "x.npy", x)
        np.save(out / "y.npy", y)
        np.save(out / "z_fp32.npy", z32)
    rows, meta = [], {"temperature": art.temperature, "threshold": art.threshold, "measured_on": cpu,
                      "schemes": {}}
    for name in [s.strip() for s in a.schemes.split(",") if s.strip()]:
        desc, raw = SCHEMES[name]
        t = time.perf_counter()
        int8 = quantize_onnx(fp32, calibration, transform, settings=_settings(raw))
        quant_s = time.perf_counter() - t
        z8, speed8 = _run(int8, x, threads)
        s = _stats(p32, _sigmoid(z8, art.temperature), y, art.threshold)
        rows.append((name, s, speed8, f"{quant_s:.0f} s"))
        print(f"{name}: {desc}: mean {s['mean']:.4f}, p99 {s['p99']:.4f} (quantized in {quant_s:.0f} s)", flush=True)
        meta["schemes"][name] = {"description": desc, "settings": raw, "stats": s}
        if out:
            (out / f"{name}.onnx").write_bytes(int8)
            np.save(out / f"z_{name}.npy", z8)
    _table(f"int8 vs float32 on {note} — {cpu['cpu']}, kernel class {cpu['kernel_class']}", rows, "quantize time")
    if out:
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        print(f"\nexported to {out}: replay with --replay {out}")


def replay(a: argparse.Namespace) -> None:
    """numpy + onnxruntime only: the exported int8 graphs on the exported images."""
    d = Path(a.replay)
    meta = json.loads((d / "meta.json").read_text())
    x, y, z32 = np.load(d / "x.npy"), np.load(d / "y.npy"), np.load(d / "z_fp32.npy")
    pick = (np.linspace(0, len(x) - 1, a.limit).round().astype(int) if a.limit and a.limit < len(x)
            else np.arange(len(x)))  # evenly spaced, so both classes stay in
    x, y, z32 = x[pick], y[pick], z32[pick]
    t, thr = meta["temperature"], meta["threshold"]
    p32 = _sigmoid(z32, t)
    rows = []
    for name in meta["schemes"]:
        if a.schemes != DEFAULT_SCHEMES and name not in a.schemes.split(","):
            continue
        z8, speed = _run((d / f"{name}.onnx").read_bytes(), x, a.threads or 2)
        here = _sigmoid(z8, t)
        there = _sigmoid(np.load(d / f"z_{name}.npy")[pick], t)
        s = _stats(p32, here, y, thr)
        vs = np.abs(here - there)
        rows.append((name, s, speed, f"{vs.mean():.4f} / {vs.max():.4f}"))
        print(f"{name}: mean {s['mean']:.4f}, p99 {s['p99']:.4f}", flush=True)
    where = meta["measured_on"]
    _table(f"int8 vs float32 (float32 logits from {where['cpu']}), int8 run here: {a.label}", rows,
           f"|Δp| vs int8 on {where['kernel_class']}: mean / max")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(FRACATLAS))
    ap.add_argument("--model", help="artifact (default: the shipped model)")
    ap.add_argument("--split", default="val", choices=["val", "test"], help="check images (default val)")
    ap.add_argument("--schemes", default=DEFAULT_SCHEMES, help=f"comma-separated, of: {', '.join(SCHEMES)}")
    ap.add_argument("--limit", type=int, default=0, help="only N check images (evenly spaced)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the calibration choice (as fracdet quantize)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--export", metavar="DIR", help="also write images, logits and graphs for --replay")
    ap.add_argument("--replay", metavar="DIR", help="re-run exported int8 graphs here (numpy + onnxruntime only)")
    ap.add_argument("--label", default="this CPU", help="with --replay: what to call this CPU in the table")
    a = ap.parse_args()
    (replay if a.replay else measure)(a)


if __name__ == "__main__":
    main()
