"""Bounded load test of ``fracdet serve`` on loopback, against ``fracdet predict`` on the same images.

    python benchmarks/serve_load.py [--requests 400] [--clients 16] [--setups 2x1,1x2] [--samples samples]

For each server set-up (``WORKERSxTHREADS``: inference worker threads × onnxruntime threads each),
starts ``fracdet serve`` in a subprocess on 127.0.0.1 (a free port, a throw-away SQLite record),
sends ``--requests`` POST /v1/predict requests, one sample image each, from ``--clients``
concurrent clients (threads, one HTTP connection each), and checks every answer (status 200 and
the probability the predictor gives in-process, to 1e-4). Then runs the CLI on the same images
in the same run (``fracdet predict`` over the same number of files). Prints one table: requests/s,
p50/p95 latency, errors, and the server's throughput as a share of the CLI's. Not a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from fracdet.cpu import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fracdet() -> list[str]:
    return [sys.executable, "-m", "fracdet"]


def _expected(files: list[Path]) -> dict[str, float]:
    """The in-process probabilities, computed in a subprocess (this one stays free of the model)."""
    code = ("import json,sys\nfrom fracdet.inference import load_model\np=load_model()\n"
            "print(json.dumps({f: p.predict(f).probability for f in sys.argv[1:]}))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, check=True)
    import json

    return {Path(k).name: v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def run_server_load(files: list[Path], expected: dict[str, float], requests: int, clients: int,
                    workers: int, threads: int) -> dict[str, float]:
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fracdet-load-"))
    cmd = _fracdet() + ["serve", "--port", str(port), "--db", f"sqlite:///{tmp / 'records.sqlite'}",
                        "--workers", str(workers), "--threads", str(threads)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        payloads = [(f.name, f.read_bytes()) for f in files]
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(requests))

        def client() -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                c.post("/v1/predict", files=[("files", payloads[0])])  # warm the connection (not counted)
                barrier.wait()
                for i in counter:
                    name, data = payloads[i % len(payloads)]
                    t0 = time.perf_counter()
                    try:
                        r = c.post("/v1/predict", files=[("files", (name, data, "image/jpeg"))])
                        dt = time.perf_counter() - t0
                        problem = None
                        if r.status_code != 200:
                            problem = f"status {r.status_code}"
                        elif abs(r.json()["predictions"][0]["probability"] - expected[name]) > 1e-4:
                            problem = "wrong probability"
                    except httpx.HTTPError as exc:
                        dt, problem = time.perf_counter() - t0, f"{type(exc).__name__}"
                    with lock:
                        latencies.append(dt)
                        if problem:
                            errors.append(problem)

        barrier = threading.Barrier(clients + 1)
        pool = [threading.Thread(target=client) for _ in range(clients)]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = sorted(latencies)
    return {"requests": len(lat), "rps": len(lat) / wall, "p50": statistics.median(lat) * 1000,
            "p95": lat[max(0, int(round(0.95 * len(lat))) - 1)] * 1000, "errors": len(errors), "wall": wall}


def run_cli(files: list[Path], n: int) -> dict[str, float]:
    """``fracdet predict`` over n files (the samples repeated, as the server got them); the
    start-up (interpreter, model) is measured on one file and reported apart."""
    listed = [str(files[i % len(files)]) for i in range(n)]
    out = Path(tempfile.mkdtemp(prefix="fracdet-cli-")) / "rows.csv"

    def timed(paths: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(_fracdet() + ["predict", *paths, "--out", str(out), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0

    t1 = timed(listed[:1])
    tn = timed(listed)
    return {"wall": tn, "startup": t1, "ips_all": n / tn, "ips": (n - 1) / max(tn - t1, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--setups", default="2x1,1x2", help="WORKERSxTHREADS,... server set-ups to measure")
    ap.add_argument("--samples", type=Path, default=ROOT / "samples")
    a = ap.parse_args()
    files = sorted(p for p in a.samples.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg files under {a.samples}")
    cpu = cpu_model()
    print(f"{len(files)} sample images, {a.requests} requests from {a.clients} clients; {os.cpu_count()} CPUs ({cpu})")
    expected = _expected(files)
    cli = run_cli(files, a.requests)
    rows = []
    for setup in a.setups.split(","):
        workers, threads = (int(x) for x in setup.lower().split("x"))
        rows.append((setup, run_server_load(files, expected, a.requests, a.clients, workers, threads)))
    print()
    print("| run | requests | images/s | p50 ms | p95 ms | errors | vs CLI |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| `fracdet predict` ({a.requests} files, one process) | — | {cli['ips']:.1f} "
          f"({cli['ips_all']:.1f} with {cli['startup']:.1f} s start-up) | — | — | — | 100% |")
    for setup, r in rows:
        w, t = setup.split("x")
        print(f"| `fracdet serve --workers {w} --threads {t}`, {a.clients} clients | {r['requests']} | {r['rps']:.1f} "
              f"| {r['p50']:.0f} | {r['p95']:.0f} | {r['errors']} | {100 * r['rps'] / cli['ips']:.0f}% |")


if __name__ == "__main__":
    main()
