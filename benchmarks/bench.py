"""fracdet CPU benchmarks — prints one table; every figure measured in this run.

    python benchmarks/bench.py [--n 1000] [--quick]      (or: make bench)

1. predict end to end on N real JPEGs (FracAtlas from ../shared when present, else generated):
   images/s and peak memory, fracdet (default settings, then each backend: int8 and float32
   onnxruntime, PyTorch) against a reference
   implementation of what the reference projects do (torchvision ResNet-50, eager, PIL decode
   at full size, resize 224, batch 32) on the same images;
2. training: images/s of phase 1 (frozen backbone) and phase 2 (fine-tuning) steps, and the
   wall time of the shipped default model's training (from its model card);
3. scaling: predict throughput and peak memory for N = 100, 1,000, 10,000;
4. cold start: ``fracdet --help`` and ``fracdet predict`` on one image, process start to output,
   with peak memory.

Section 1 also runs the command users run — ``fracdet predict FOLDER --out rows.csv`` on the
same N images — timed from process start to the written CSV.

Each measurement runs in a fresh subprocess (peak RSS is per process) under the same
environment as the ``fracdet`` command (tcmalloc when installed).  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRACATLAS = REPO.parent / "shared" / "data" / "fracatlas"


# ----------------------------------------------------------------------------- workers (run in subprocesses)
def _images(n: int) -> list[str]:
    files = sorted(str(p) for p in FRACATLAS.glob("*/*.jpg")) if FRACATLAS.is_dir() else []
    if not files:
        import numpy as np
        from PIL import Image

        tmp = Path(tempfile.mkdtemp(prefix="fracdet-bench-"))
        rng = np.random.default_rng(0)
        for i in range(64):
            p = tmp / f"synthetic_{i:03d}.jpg"
            Image.fromarray(rng.integers(0, 255, (1024, 819), dtype=np.uint8)).save(p, quality=92)
            files.append(str(p))
    return (files * (n // len(files) + 1))[:n]


def _worker_fracdet(n: int, backend: str) -> dict:
    from fracdet.inference import load_model

    files = _images(n)
    t0 = time.perf_counter()
    model = load_model(backend=backend)
    rows = 0
    for r in model.predict_paths(files):
        rows += r.ok
    return {"seconds": time.perf_counter() - t0, "images": rows, "backend": model.backend}


def _worker_stages(n: int) -> dict:
    """The default model's two stages alone, one after the other: reading a film at the size the
    model needs (decode with JPEG draft, grey, resize: what predict's reader thread does) and the
    float32 onnxruntime graph on ready batches of 8 (all its outputs, as predict runs it)."""
    from fracdet.inference import load_model
    from fracdet.io.images import read_image

    model = load_model(backend="onnx")
    size = model.artifact.preprocess.input_size
    files = _images(n)
    t0 = time.perf_counter()
    prepared = [model.transform.prepare(read_image(f, min_size=size).pixels) for f in files]
    read_s = time.perf_counter() - t0
    batch = model.transform.finish_batch(prepared[:8])
    model.logits(batch)  # warm the session
    t0 = time.perf_counter()
    for _ in range(0, n, 8):
        model.logits(batch)
    net_s = time.perf_counter() - t0
    return {"seconds": read_s + net_s, "images": n, "read_s": read_s, "net_s": net_s, "input_size": size}


def _worker_reference(n: int) -> dict:
    import torch
    import torchvision
    from PIL import Image

    files = _images(n)
    t0 = time.perf_counter()
    model = torchvision.models.resnet50(weights=None, num_classes=1).eval()
    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize((224, 224)), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    done = 0
    with torch.no_grad():
        for i in range(0, len(files), 32):
            batch = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
            torch.sigmoid(model(batch))
            done += len(batch)
    return {"seconds": time.perf_counter() - t0, "images": done}


def _worker_train(phase: str, steps: int) -> dict:
    import torch

    from fracdet.models import create_model

    model = create_model("efficientnet_lite0", pretrained=True).to(memory_format=torch.channels_last)
    if phase == "1":
        model.freeze_backbone()
        params = model.head_parameters()
    else:
        model.unfreeze_backbone()
        params = list(model.parameters())
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (32,)).float()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"seconds": time.perf_counter() - t0, "images": steps * 32}


def _worker_main(args: list[str]) -> None:
    kind = args[0]
    if kind == "fracdet":
        out = _worker_fracdet(int(args[1]), args[2])
    elif kind == "reference":
        out = _worker_reference(int(args[1]))
    elif kind == "stages":
        out = _worker_stages(int(args[1]))
    else:
        out = _worker_train(args[1], int(args[2]))
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------- driver
def _env(system_malloc: bool = False) -> dict:
    from fracdet.runtime import find_tcmalloc

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    lib = find_tcmalloc()
    if system_malloc:
        env["LD_PRELOAD"] = ":".join(p for p in env.get("LD_PRELOAD", "").split(":") if p and "tcmalloc" not in p)
    elif lib and os.environ.get("FRACDET_ALLOCATOR", "") not in ("system", "glibc", "0", "off"):
        env["LD_PRELOAD"] = lib
    return env


def _run(*args: str, system_malloc: bool = False) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], env=_env(system_malloc),
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark worker {args} failed:\n{proc.stderr[-2000:]}")


def _timed(cmd: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=_env(), capture_output=True, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def _child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command, from its start to its exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def _folder(n: int) -> Path:
    """A folder of N distinct file names (links to the benchmark images) for the CLI run."""
    folder = Path(tempfile.mkdtemp(prefix="fracdet-bench-cli-"))
    for i, f in enumerate(_images(n)):
        (folder / f"{i:05d}_{Path(f).name}").symlink_to(f)
    return folder


def _row(name: str, r: dict) -> str:
    return f"| {name} | {r['images'] / r['seconds']:.1f} | {r['peak_mb']:.0f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description="fracdet CPU benchmarks")
    ap.add_argument("--n", type=int, default=1000, help="images for the predict comparison")
    ap.add_argument("--quick", action="store_true", help="smaller N everywhere (a smoke run)")
    a = ap.parse_args()
    n = 100 if a.quick else a.n
    from fracdet.cpu import cpu_model, cpu_summary
    from fracdet.runtime import find_tcmalloc

    info = cpu_summary()
    print(f"# fracdet benchmarks — {cpu_model()}, {os.cpu_count()} CPU cores, int8 kernels "
          f"{info['kernel_class']} (flags: {' '.join(info.get('flags', []))}), allocator "
          f"{'tcmalloc' if find_tcmalloc() else 'glibc'}, images: "
          f"{'FracAtlas JPEGs' if FRACATLAS.is_dir() else 'generated 1024×819 JPEGs'}\n")
    _run("fracdet", "32", "onnx")  # warm the ONNX export cache so it is not timed
    print(f"## 1. predict end to end, N = {n}\n\n| pipeline | images/s | peak MB |\n|---|---|---|")
    auto = _run("fracdet", str(n), "auto")
    from fracdet.artifact import load_artifact

    q = load_artifact().int8
    int8 = _run("fracdet", str(n), "int8") if q else None
    onnx = _run("fracdet", str(n), "onnx")
    eager = _run("fracdet", str(n), "torch")
    ref = _run("reference", str(n))
    fracdet = shutil.which("fracdet") or str(Path(sys.executable).parent / "fracdet")
    folder = _folder(n)
    cli_s, cli_mb = _child([fracdet, "predict", str(folder), "--out", str(folder.parent / f"{folder.name}.csv"),
                            "--quiet"])
    cli = {"images": n, "seconds": cli_s, "peak_mb": cli_mb}
    ref_glibc = _run("reference", str(n), system_malloc=True)
    print(_row(f"fracdet default model, default settings (`--backend auto` = {auto['backend']})", auto))
    if int8 is not None:
        print(_row("fracdet default model, int8 onnxruntime (`--backend int8`"
                   + (")" if q.get("accepted") else ", opt-in: outside the drift tolerance)"), int8))
    print(_row("fracdet default model, float32 onnxruntime (`--backend onnx`)", onnx))
    print(_row("fracdet default model, PyTorch (`--backend torch`)", eager))
    print(_row("**`fracdet predict FOLDER --out rows.csv`, process start to CSV (what users run)**", cli))
    print(_row("reference: torchvision ResNet-50 eager, PIL full decode (same environment)", ref))
    print(_row("reference as the reference projects run it (glibc malloc)", ref_glibc))
    rate = lambda r: r["images"] / r["seconds"]  # noqa: E731
    print(f"\nvs the reference in the same environment: the CLI, process start to CSV, {rate(cli) / rate(ref):.1f}×; "
          f"in-process default settings {rate(auto) / rate(ref):.1f}×"
          + (f", int8 {rate(int8) / rate(ref):.1f}×" if int8 is not None else "")
          + f"; vs the reference under glibc malloc: {rate(auto) / rate(ref_glibc):.1f}×\n")

    st = _run("stages", str(n))
    bar = 10 * rate(ref)
    print(f"Where the time goes (default model, {st['input_size']} px, each stage alone on both cores): reading "
          f"{n / st['read_s']:.0f} images/s, the float32 graph {n / st['net_s']:.0f} images/s; even if reading cost "
          f"nothing, the graph alone is {n / st['net_s'] / rate(ref):.1f}× the reference (the 10× bar is "
          f"{bar:.0f} images/s).\n")

    steps = 3 if a.quick else 8
    p1, p2 = _run("train", "1", str(steps)), _run("train", "2", str(steps))
    print("## 2. training (EfficientNet-Lite0, 224 px, batch 32)\n\n| step | images/s |\n|---|---|")
    print(f"| phase 1 (frozen backbone) | {p1['images'] / p1['seconds']:.1f} |")
    print(f"| phase 2 (fine-tuning) | {p2['images'] / p2['seconds']:.1f} |")
    card = json.loads((REPO / "docs" / "default-model-metrics.json").read_text()) \
        if (REPO / "docs" / "default-model-metrics.json").is_file() else {}
    if card.get("training_wall_seconds"):
        print(f"| default model, whole training | {card['training_wall_seconds'] / 60:.1f} min |")
    print()

    sizes = [100, 300] if a.quick else [100, 1000, 10000]
    print("## 3. scaling (default settings)\n\n| N | images/s | peak MB |\n|---|---|---|")
    for k in sizes:
        r = _run("fracdet", str(k), "auto")
        print(f"| {k} | {r['images'] / r['seconds']:.1f} | {r['peak_mb']:.0f} |")
    print()

    one = _images(1)[0]
    print("## 4. cold start (best of 3)\n\n| command | seconds | peak MB |\n|---|---|---|")
    print(f"| fracdet --help | {_timed([fracdet, '--help']):.2f} | |")
    runs = [_child([fracdet, "predict", one, "--quiet"]) for _ in range(3)]
    print(f"| fracdet predict ONE.jpg | {min(r[0] for r in runs):.2f} | {max(r[1] for r in runs):.0f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2:])
    else:
        main()
