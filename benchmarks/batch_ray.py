"""Images/s of ``fracdet predict`` with the local engine and with ``--engine ray`` (1 and 2 workers)
on the same films, and Ray's overhead per image.  Not a test.

    python benchmarks/batch_ray.py [--n 1000] [--data ../shared/data/fracatlas] [--model M]

Every configuration predicts the same first ``--n`` FracAtlas JPEGs (sorted), end to end
(read → decode → network → rows written).  The local engine runs with onnxruntime on all CPUs
(as ``fracdet predict``) and on 1 thread; each Ray worker gets the threads of its CPU share
(fracdet.batch.engine.plan_workers).  Ray is started once (its start-up is timed apart); each Ray
run includes planning, the actor start (model load) and writing/reading the Parquet shards.
The decode-only row is what a GPU node's CPUs still do per film (docs/scale.md).
Overhead per image = Ray with 1 worker (1 thread) − local on 1 thread, per image.
Prints a Markdown table (docs/scale.md holds the last one) and the CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from fracdet.cpu import cpu_model


def _local(files: list[Path], model: str | None, threads: int | None) -> float:
    from fracdet.inference import load_model
    from fracdet.inference.writer import PredictionWriter

    t0 = time.perf_counter()
    predictor = load_model(model, threads=threads)
    with PredictionWriter(Path(tempfile.mkdtemp(prefix="fracdet-bench-")) / "rows.csv") as writer:
        for pred in predictor.predict_paths(files, batch_size=8):
            writer.add(pred)
    return time.perf_counter() - t0


def _decode_only(files: list[Path], model: str | None) -> float:
    """Read + decode + resize on one core, no network: what a GPU node's CPUs must still do per film."""
    from fracdet.artifact import load_artifact
    from fracdet.io.images import read_image
    from fracdet.transforms import build_transforms

    spec = load_artifact(model).preprocess
    transform = build_transforms(spec)
    t0 = time.perf_counter()
    for f in files:
        transform.prepare(read_image(f, min_size=spec.input_size).pixels)
    return time.perf_counter() - t0


def _ray(files: list[Path], model: str | None, workers: int) -> float:
    from fracdet.batch.engine import RayPlan, run_ray_predict

    out = Path(tempfile.mkdtemp(prefix="fracdet-bench-ray-")) / "out"
    plan = RayPlan(sources=[str(f) for f in files], out=out, model=model, workers=workers)
    t0 = time.perf_counter()
    run_ray_predict(plan)
    elapsed = time.perf_counter() - t0
    assert plan.summary["rows"] == len(files), plan.summary
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"))
    ap.add_argument("--model")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files = sorted(Path(a.data).glob("*/*.jpg"))[: a.n]
    if len(files) < a.n:
        raise SystemExit(f"{a.data}: {len(files)} JPEGs, {a.n} wanted")
    import ray

    for f in files:  # the page cache warm for every configuration alike
        f.read_bytes()
    results: list[tuple[str, float]] = []
    results.append(("local, onnxruntime on all CPUs", _local(files, a.model, None)))
    results.append(("local, 1 thread", _local(files, a.model, 1)))
    results.append(("decode + resize only (no network), 1 core", _decode_only(files, a.model)))
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        for workers in (1, 2):
            results.append((f"ray, {workers} worker(s)", _ray(files, a.model, workers)))
    finally:
        ray.shutdown()
    n = len(files)
    print(f"\n{n} FracAtlas JPEGs; CPU: {cpu_model()}, {os.cpu_count()} cores; Ray start-up {startup:.1f} s (not counted)\n")
    print("| engine | wall s | images/s | ms/image |")
    print("|---|---:|---:|---:|")
    for name, sec in results:
        print(f"| {name} | {sec:.1f} | {n / sec:.1f} | {1000 * sec / n:.1f} |")
    local1 = dict(results)["local, 1 thread"]
    ray1 = dict(results)["ray, 1 worker(s)"]
    print(f"\nRay overhead per image (ray 1 worker − local 1 thread): {1000 * (ray1 - local1) / n:.2f} ms")


if __name__ == "__main__":
    main()
