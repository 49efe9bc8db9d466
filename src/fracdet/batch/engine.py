"""The Ray Data plan of ``fracdet predict --engine ray``:

    paths (driver) → read bytes (Ray tasks) → predict (an actor pool, one model per actor) → Parquet shards

Each actor loads the model ONCE (:func:`fracdet.inference.load_model`) with onnxruntime's
intra-op threads set to the CPUs Ray gives it — Ray sets OMP_NUM_THREADS=1, but onnxruntime
sizes its own pool to the whole host and would oversubscribe. The actors together take at most
the cluster's CPUs less one, so the reading tasks always find a CPU (an all-actor plan can
hang). Each actor writes a batch's bytes to a private temporary folder under the files' own
names and runs the same :meth:`~fracdet.inference.Predictor.predict_paths` as the local engine:
same readers, same pixels, same rows; a bad file is an error row, never a failed task.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fracdet.errors import FracdetError

log = logging.getLogger(__name__)

FILES_PER_BLOCK = 32
"""Input files per Ray block (one read task, then one actor call of ``map_batches``)."""


@dataclass
class RayPlan:
    """Options of one run (the CLI's, and the benchmark's)."""

    sources: Sequence[str]
    out: Path
    model: str | None = None
    backend: str = "auto"
    address: str | None = None
    workers: int | None = None
    resume: bool = False
    csv: bool = False
    by_study: bool = False
    study_agg: str = "max"
    study_map: str | None = None
    batch_size: int = 8
    force: bool = False
    dicom_window: int | None = 0
    assess: bool = True  # out-of-distribution refusal (fracdet.inference.assess); --no-ood turns it off
    summary: dict[str, Any] = field(default_factory=dict)


class PredictActor:
    """``map_batches`` callable class: Arrow batch of ``path, bytes, read_error`` → shard rows."""

    def __init__(self, model: str | None, backend: str, threads: int, batch_size: int,
                 force: bool = False, window: int | None = 0, assess: bool = True) -> None:
        from fracdet.inference import load_model
        from fracdet.io.dicom import DicomOptions

        logging.getLogger("pydicom").setLevel(logging.ERROR)
        self.predictor = load_model(model, backend=backend, threads=threads, assess=assess)  # once per actor
        self.batch_size = batch_size
        self.dicom = DicomOptions(force=force, window=window)
        self.tmp = Path(tempfile.mkdtemp(prefix="fracdet-ray-"))

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)

    def __call__(self, batch: Any) -> Any:
        from fracdet.batch.output import rows_table
        from fracdet.inference.prediction import Prediction

        paths = batch.column("path").to_pylist()
        data = batch.column("bytes").to_pylist()
        read_errors = batch.column("read_error").to_pylist()
        rows: list[dict[str, Any]] = []
        local: list[Path] = []
        original: dict[str, str] = {}
        slots: list[Any] = []  # per input: its error row, or its temporary file
        for i, (path, blob, err) in enumerate(zip(paths, data, read_errors)):
            if err is not None or blob is None:
                slots.append(Prediction(path=path, probability=None, label=None,
                                        threshold=self.predictor.threshold, error=err or "cannot open file"))
                continue
            folder = self.tmp / str(i)
            folder.mkdir(exist_ok=True)
            name = path.rstrip("/").rsplit("/", 1)[-1] or "input"
            f = folder / name
            f.write_bytes(blob)
            local.append(f)
            original[str(f)] = path
            slots.append(f)
        try:
            try:
                done = self._predict(local)
            except Exception:  # a reader bug on one file: redo file by file so only that file fails
                done = {}
                for f in local:
                    try:
                        done.update(self._predict([f]))
                    except Exception as exc:
                        done[str(f)] = [Prediction(path=str(f), probability=None, label=None,
                                                   threshold=self.predictor.threshold,
                                                   error=f"unexpected error ({type(exc).__name__}: {exc})")]
            for slot in slots:
                if isinstance(slot, Prediction):
                    rows.append(slot.to_row())
                    continue
                preds = done.get(str(slot)) or [Prediction(path=str(slot), probability=None, label=None,
                                                           threshold=self.predictor.threshold, error="no result")]
                rows.extend(self._restore(pred, str(slot), original[str(slot)]) for pred in preds)
        finally:
            for f in local:
                shutil.rmtree(f.parent, ignore_errors=True)
        return rows_table(rows)

    def _predict(self, files: list[Path]) -> dict[str, list[Any]]:
        """Each file's predictions (one per DICOM frame), by its temporary path."""
        out: dict[str, list[Any]] = {}
        for pred in self.predictor.predict_paths(files, batch_size=self.batch_size, dicom=self.dicom):
            out.setdefault(str(pred.path), []).append(pred)
        return out

    @staticmethod
    def _restore(pred: Any, tmp: str, path: str) -> dict[str, Any]:
        pred.path = path
        if pred.error:
            pred.error = pred.error.replace(tmp, path)
        return pred.to_row()


def plan_workers(cluster_cpus: float, workers: int | None) -> tuple[int, float, int]:
    """``(workers, num_cpus per actor, onnxruntime threads)``: the actors share the cluster's
    CPUs less one (left for the reading tasks); default one worker per such CPU."""
    spare = max(1.0, float(cluster_cpus) - 1.0)
    n = workers if workers else max(1, int(spare))
    per = spare / n
    per = float(int(per)) if per >= 1 else round(per, 3)
    return n, per, max(1, int(per))


def _init_ray(address: str | None) -> bool:
    """Connect (``auto``, ``ray://host:10001``) or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address:
        kwargs = {"address": address, "log_to_driver": True}
    ray.init(**kwargs)
    return True


def _import_ray() -> Any:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise FracdetError("--engine ray needs Ray Data: pip install 'fracdet[ray]'") from None
    return ray


def run_ray_predict(plan: RayPlan) -> int:
    """Run one batch; returns the exit status of ``fracdet predict`` (0, 1 with error rows, 2 without inputs)."""
    import time

    from fracdet.batch import output
    from fracdet.batch.sources import list_inputs, read_bytes_batch

    ray = _import_ray()
    out = Path(plan.out)
    if out.suffix.lower() in (".csv", ".json") and not out.is_dir():
        raise FracdetError(f"{out}: with --engine ray, --out is a folder (Parquet shards go under it)")
    inputs = list_inputs(plan.sources)
    if not inputs:
        print("error: no image files found in " + ", ".join(map(str, plan.sources)), file=sys.stderr)
        return 2
    shards = output.shard_files(out)
    if shards and not plan.resume:
        raise FracdetError(f"{out}: already holds predictions; add --resume to continue it, or choose a new folder")
    done = output.done_paths(out) if plan.resume else set()
    todo = [p for p in inputs if p not in done]
    started = time.perf_counter()
    if todo:
        started_ray = _init_ray(plan.address)
        try:
            cpus = ray.cluster_resources().get("CPU", 1.0)
            n, per, threads = plan_workers(cpus, plan.workers)
            log.info("ray: %d input(s) to predict (%d already done), %d worker(s) × %.3g CPU, %d thread(s) each",
                     len(todo), len(inputs) - len(todo), n, per, threads)
            blocks = max(1, min(math.ceil(len(todo) / FILES_PER_BLOCK), 100_000))
            ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
            ds = ds.map_batches(read_bytes_batch, batch_format="pyarrow", batch_size=None, num_cpus=1)
            ds = ds.map_batches(
                PredictActor, batch_format="pyarrow", batch_size=FILES_PER_BLOCK,
                compute=ray.data.ActorPoolStrategy(size=n), num_cpus=per,
                fn_constructor_kwargs={"model": plan.model, "backend": plan.backend, "threads": threads,
                                       "batch_size": plan.batch_size, "force": plan.force,
                                       "window": plan.dicom_window, "assess": plan.assess},
            )
            ds.write_parquet(str(output.shard_dir(out)))
        finally:
            if started_ray:
                ray.shutdown()
    elapsed = time.perf_counter() - started
    table = output.read_shards(out)
    rows = output.sorted_rows(table)
    if plan.csv:
        output.write_csv(rows, out / "predictions.csv")
    if plan.by_study:
        from fracdet.artifact import load_artifact
        from fracdet.inference import read_study_map
        from fracdet.operating import Decision

        study_map = read_study_map(plan.study_map) if plan.study_map else None
        output.write_studies(rows, out, Decision.of(load_artifact(plan.model)), plan.study_agg, study_map, plan.csv)
    bad = sum(r["error"] is not None for r in rows)
    plan.summary.update(inputs=len(inputs), skipped=len(inputs) - len(todo), predicted=len(todo), rows=len(rows),
                        errors=bad, seconds=elapsed)
    print(f"{len(todo)} file(s) predicted in {elapsed:.1f} s, {len(inputs) - len(todo)} already in {out} "
          f"(--resume); {len(rows)} row(s) in {output.shard_dir(out)}"
          + (f"; {bad} could not be read (see the error column)" if bad else ""), file=sys.stderr)
    return 1 if bad else 0
