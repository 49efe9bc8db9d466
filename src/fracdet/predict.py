"""The one prediction path: image → transform from the artifact → model → calibrated
probability → threshold from the artifact → label.  CLI, API and web page all use
:class:`Predictor`.

DICOM files give one :class:`Prediction` per frame (``meta["frame"]``), carrying the
DICOM identifiers (``study_uid``, ``series_uid``, ``sop_uid``, ``modality``,
``body_part``, ``view``) in ``meta`` and in their output rows. :func:`group_by_study`
combines the views of one study into a :class:`StudyPrediction`."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from fracdet.artifact import ModelArtifact, load_artifact
from fracdet.calibration import calibrated_probability
from fracdet.errors import FracdetError, ImageReadError
from fracdet.io.dicom import DicomOptions, dicom_options, read_frames
from fracdet.io.images import XRay, is_dicom_file, iter_image_files, read_image
from fracdet.operating import verdict
from fracdet.transforms import build_transforms

log = logging.getLogger(__name__)

ROW_META_KEYS = ("frame", "modality", "body_part", "view", "study_uid", "series_uid", "sop_uid")
"""``meta`` keys copied into output rows when present (DICOM inputs)."""
STUDY_AGGREGATIONS = ("max", "mean")


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and the numbers are None) when it could not be read."""

    path: str | None
    probability: float | None
    label: str | None
    threshold: float
    logit: float | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    """H×W float32 in [0, 1] at the original size, when asked for (see fracdet.explain)."""
    verdict: str | None = None
    """``fracture`` / ``doubt`` / ``no fracture`` at the model's two operating points (see fracdet.operating)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_row(self) -> dict[str, Any]:
        """Flat row for CSV/JSON output (plus the DICOM keys of ``meta`` when present)."""
        heatmap, self.heatmap = self.heatmap, None  # rows never carry the map
        try:
            d = asdict(self)
        finally:
            self.heatmap = heatmap
        d.pop("heatmap")
        meta = d.pop("meta")
        for key in ROW_META_KEYS:
            if meta.get(key) not in (None, ""):
                d[key] = meta[key]
        return d


@dataclass
class StudyPrediction:
    """One study's verdict from its views: the ``aggregation`` (max or mean) of the views'
    calibrated probabilities, labelled with the same threshold. Views that could not be
    read are listed but left out of the verdict; ``error`` is set when none could be."""

    study: str
    probability: float | None
    label: str | None
    threshold: float
    aggregation: str
    views: list[Prediction] = field(default_factory=list)
    error: str | None = None
    verdict: str | None = None  # fracture / doubt / no fracture at the model's bands (see group_by_study)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def n_views(self) -> int:
        return sum(v.ok for v in self.views)

    def to_row(self) -> dict[str, Any]:
        """The study's own row (CSV: ``level=study``)."""
        return {
            "level": "study", "study": self.study, "path": None,
            "probability": self.probability, "label": self.label, "verdict": self.verdict,
            "threshold": self.threshold, "logit": None, "error": self.error, "n_views": self.n_views,
            "aggregation": self.aggregation,
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """Flat rows for CSV: the study row, then one ``level=view`` row per view."""
        return [self.to_row()] + [
            {"level": "view", "study": self.study, **v.to_row()} for v in self.views
        ]

    def to_json(self) -> dict[str, Any]:
        """Nested form for JSON: the study with its views under ``views``."""
        d = self.to_row()
        d.pop("level")
        d.pop("path")
        d.pop("logit")
        d["views"] = [v.to_row() for v in self.views]
        return d


def read_study_map(path: str | Path) -> dict[str, str]:
    """A CSV with ``path`` and ``study`` columns (a dataset manifest with a ``study``
    column works) → {resolved path: study}; relative paths are taken from the CSV's
    folder. Raises :class:`FracdetError`."""
    import csv

    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            if "path" not in fields or "study" not in fields:
                raise FracdetError(f"{p}: a study map needs 'path' and 'study' columns; found {sorted(fields)}")
            out: dict[str, str] = {}
            for row in reader:
                file = (row.get(fields["path"]) or "").strip()
                study = (row.get(fields["study"]) or "").strip()
                if not file or not study:
                    continue
                fp = Path(file).expanduser()
                if not fp.is_absolute():
                    fp = p.parent / fp
                out[str(fp.resolve())] = study
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FracdetError(f"{p}: cannot read study map ({exc})") from None
    return out


def study_key(pred: Prediction, study_map: Mapping[str, str] | None = None) -> str:
    """Which study a prediction belongs to: its DICOM StudyInstanceUID, else the study
    given for its file in ``study_map``, else the file itself (a one-view study)."""
    uid = pred.meta.get("study_uid")
    if uid:
        return str(uid)
    if study_map and pred.path is not None:
        found = study_map.get(str(Path(pred.path).resolve()))
        if found:
            return found
    return str(pred.path)


def group_by_study(
    predictions: Iterable[Prediction], aggregation: str = "max",
    study_map: Mapping[str, str] | None = None, threshold: float | None = None,
    labels: Sequence[str] | None = None, bands: tuple[float, float] | None = None,
) -> list[StudyPrediction]:
    """Combine views into study verdicts, studies in order of first appearance.

    ``aggregation``: ``"max"`` (a study is as suspicious as its most suspicious view)
    or ``"mean"`` of the calibrated view probabilities; the study label applies the
    model's threshold (``threshold``, default: that of the views) to that value, and
    ``bands`` (the model's doubt and fracture thresholds) give the study its verdict.
    """
    if aggregation not in STUDY_AGGREGATIONS:
        raise FracdetError(f"unknown study aggregation '{aggregation}' (choose {' or '.join(STUDY_AGGREGATIONS)})")
    groups: dict[str, list[Prediction]] = {}
    for pred in predictions:
        groups.setdefault(study_key(pred, study_map), []).append(pred)
    names = list(labels) if labels else ["not_fractured", "fractured"]
    out: list[StudyPrediction] = []
    for study, views in groups.items():
        thr = threshold if threshold is not None else views[0].threshold
        probs = [v.probability for v in views if v.ok and v.probability is not None]
        if not probs:
            out.append(StudyPrediction(study, None, None, thr, aggregation, views,
                                       error=f"no readable view ({len(views)} failed)"))
            continue
        prob = float(max(probs) if aggregation == "max" else float(np.mean(probs)))
        out.append(StudyPrediction(study, prob, names[int(prob >= thr)], thr, aggregation, views,
                                   verdict=verdict(prob, *bands) if bands else None))
    return out


class Predictor:
    """A loaded model ready to predict; built from an artifact and nothing else."""

    def __init__(self, artifact: ModelArtifact, threads: int | None = None, backend: str = "auto",
                 tta: bool = False) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.artifact = artifact
        self._model: torch.nn.Module | None = None  # built on first use (the ONNX path may never need it)
        self.backend = choose_backend("torch" if tta else backend, artifact)
        self.tta_model = None  # ``tta``: flip + small rotations averaged in probability space (fracdet.tta)
        if tta:
            from fracdet.tta import with_tta

            self.tta_model = with_tta(self.model, artifact)
        self._onnx: Any = None
        if self.backend == "onnx":
            from fracdet.export import OnnxRunner, cached_onnx

            self._onnx = OnnxRunner(cached_onnx(artifact, lambda: self.model), threads=threads)
        elif self.backend == "int8":
            from fracdet.export import OnnxRunner

            self._onnx = OnnxRunner(artifact.int8_onnx, threads=threads)
        self.transform = build_transforms(artifact.preprocess)
        self.threshold = artifact.threshold
        self.temperature = artifact.temperature
        self.labels = artifact.labels
        doubt, fracture = getattr(artifact, "doubt_threshold", None), getattr(artifact, "fracture_threshold", None)
        self.doubt_threshold = self.threshold if doubt is None else float(doubt)
        self.fracture_threshold = self.threshold if fracture is None else float(fracture)

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch network (for the torch backend, TTA, heatmaps and ONNX export)."""
        if self._model is None:
            with torch.inference_mode(False):  # may first be asked for inside inference mode
                self._model = self.artifact.build_model().to(memory_format=torch.channels_last)
        return self._model

    @classmethod
    def from_path(cls, path: str | Path | None = None, backend: str = "auto") -> "Predictor":
        return cls(load_artifact(path), backend=backend)

    def _results(self, logits: np.ndarray, items: Sequence[XRay]) -> list[Prediction]:
        probs = calibrated_probability(logits, self.temperature)
        return [
            Prediction(
                path=x.path, probability=float(p), label=self.labels[int(p >= self.threshold)],
                threshold=self.threshold, logit=float(z), meta=dict(x.meta),
                verdict=verdict(float(p), self.doubt_threshold, self.fracture_threshold),
            )
            for x, p, z in zip(items, probs, logits)
        ]

    @torch.inference_mode()
    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw logits for a batch of prepared inputs N×C×S×S (onnxruntime or PyTorch)."""
        if self._onnx is not None:
            return self._onnx(np.asarray(batch))
        x = torch.as_tensor(batch)
        if self.tta_model is not None:
            return self.tta_model(x).float().numpy()
        return self.model(x.contiguous(memory_format=torch.channels_last)).float().numpy()

    def predict(self, image: str | Path | np.ndarray | XRay,
                dicom: DicomOptions | None = None, heatmap: bool = False,
                cam_method: str = "gradcam") -> Prediction:
        """Predict one image given as a path, an H×W [0, 1] array (bone bright) or an XRay
        (a multi-frame DICOM path: frame 0; :meth:`predict_paths` gives every frame)."""
        if isinstance(image, np.ndarray):
            image = XRay(pixels=np.asarray(image, dtype=np.float32), path=None, meta={})
        elif not isinstance(image, XRay):
            with dicom_options(dicom or DicomOptions()):
                image = read_image(image, min_size=self.artifact.preprocess.input_size)
        batch = self.transform(image.pixels)[None]
        pred = self._results(self.logits(batch), [image])[0]
        if heatmap:  # ``heatmap=True``: the CAM (``cam_method``) at the original size
            from fracdet.explain import heatmaps

            pred.heatmap = heatmaps(self.model, batch, [image], cam_method, self.artifact.preprocess.resize)[0]
        return pred

    def _error_row(self, path: Path, reason: str, exc: BaseException) -> Prediction:
        return Prediction(path=str(path), probability=None, label=None, threshold=self.threshold,
                          error=reason, meta=dict(getattr(exc, "meta", None) or {}))

    def _read(self, path: Path, size: int, dicom: DicomOptions) -> list[XRay]:
        if is_dicom_file(path):
            return read_frames(path, dicom)
        with dicom_options(dicom):
            return [read_image(path, min_size=size)]

    def predict_paths(
        self, paths: Iterable[str | Path], batch_size: int = 8,
        on_result: Callable[[Prediction], None] | None = None,
        dicom: DicomOptions | None = None, heatmaps: bool = False, cam_method: str = "gradcam",
    ) -> Iterator[Prediction]:
        """Stream predictions for files and folders (recursively), in batches, in input
        order; a bad file yields one error row and the batch goes on. A DICOM file gives
        one prediction per frame; ``dicom`` sets how DICOM is read (``force``, ``window``).

        Decoding runs in line: on 2 cores, a decode thread (7%) or a decode worker process
        (20–30%) beside the network measured slower than decoding between network calls."""
        queue: list[tuple[XRay, np.ndarray] | Prediction] = []  # error rows keep their place
        size = self.artifact.preprocess.input_size
        dicom = dicom or DicomOptions()
        buffer = np.empty((batch_size, self.artifact.preprocess.channels, size, size), np.float32)  # reused
        n_ready = 0

        def flush() -> list[Prediction]:
            ready = [q for q in queue if not isinstance(q, Prediction)]
            batch = self.transform.finish_batch([t for _, t in ready], out=buffer) if ready else None
            done = iter(self._results(self.logits(batch), [x for x, _ in ready]) if ready else [])
            out = [q if isinstance(q, Prediction) else next(done) for q in queue]
            if heatmaps and ready:  # ``heatmaps=True``: each prediction carries its CAM
                from fracdet.explain import heatmaps as cams

                maps = iter(cams(self.model, batch.copy(), [x for x, _ in ready],
                                 cam_method, self.artifact.preprocess.resize))
                for q, o in zip(queue, out):
                    if not isinstance(q, Prediction):
                        o.heatmap = next(maps)
            queue.clear()
            return out

        def load(path: Path) -> list[tuple[XRay, np.ndarray]] | Prediction:
            """The file's resized 1×S×S images (normalised per batch by ``flush``) or its error row."""
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    xrays = self._read(path, size, dicom)
                for w in caught:
                    log.warning("%s", w.message)
                return [(x, self.transform.prepare(x.pixels)) for x in xrays]
            except ImageReadError as exc:
                return self._error_row(path, exc.reason, exc)
            except FracdetError as exc:
                return self._error_row(path, str(exc), exc)

        for loaded in map(load, iter_image_files(paths)):
            if isinstance(loaded, Prediction):
                queue.append(loaded)
                prepared = []
            else:
                prepared = loaded
            if not prepared and n_ready == 0:
                yield from flush()  # nothing waiting: report the error now
                continue
            for item in prepared:
                queue.append(item)
                n_ready += 1
                if n_ready >= batch_size:
                    yield from flush()
                    n_ready = 0
        yield from flush()


BACKENDS = ("auto", "int8", "onnx", "torch")


def choose_backend(backend: str, artifact: ModelArtifact | None = None) -> str:
    """The inference backend: for 'auto', onnxruntime int8 when the artifact carries an int8
    graph within tolerance (see :mod:`fracdet.quantize`), else onnxruntime float32, else
    PyTorch.  'int8' outside the tolerance is allowed with a warning giving the measured drift."""
    if backend not in BACKENDS:
        raise FracdetError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    if backend == "torch":
        return "torch"
    from fracdet.export import onnx_available

    has_int8 = artifact is not None and artifact.int8_onnx is not None
    accepted = has_int8 and bool((artifact.int8 or {}).get("accepted"))  # type: ignore[union-attr]
    if not onnx_available():
        if backend in ("onnx", "int8"):
            raise FracdetError(f"the {backend} backend needs onnxruntime: pip install onnxruntime "
                               "(or use --backend torch)")
        return "torch"
    if backend == "int8" and not has_int8:
        raise FracdetError("this model has no int8 graph; add one with: fracdet quantize DATA --model MODEL --out NEW")
    if backend == "int8" and not accepted:
        check = artifact.int8.get("check", {})  # type: ignore[union-attr]
        log.warning("int8 on request although outside the tolerance: its probabilities differ from float32 by "
                    "%.3f on average (p99 %.3f) on %s", check.get("mean_abs_diff", float("nan")),
                    check.get("p99_abs_diff", float("nan")), check.get("on", "held-out images"))
    if backend == "auto":
        return "int8" if accepted else "onnx"
    return backend


def load_model(path: str | Path | None = None, backend: str = "auto", tta: bool = False) -> Predictor:
    """Load an artifact (the shipped default when ``path`` is None) as a :class:`Predictor`;
    ``backend`` is 'auto' (see :func:`choose_backend`), 'int8', 'onnx' (float32) or 'torch';
    ``tta``: test-time augmentation (PyTorch backend)."""
    return Predictor(load_artifact(path), backend=backend, tta=tta)


@torch.inference_mode()
def collect_logits(model: torch.nn.Module | Callable[[torch.Tensor], Any], samples: Sequence[Any], transform: Any,
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and sample indices for labelled samples (unreadable files are left
    out with a warning, so the indices say which samples the rows belong to).  ``model``: a
    network, or any callable batch → logits such as :meth:`Predictor.logits`."""
    from fracdet.data.loader import make_loader

    is_net = isinstance(model, torch.nn.Module)
    if is_net:
        model.eval()
    logits, labels, index = [], [], []
    for x, y, i in make_loader(samples, transform, batch_size=batch_size):
        if len(x):
            out = model(x.contiguous(memory_format=torch.channels_last)) if is_net else model(x)
            logits.append(out.float().numpy() if torch.is_tensor(out) else np.asarray(out, dtype=np.float32))
            labels.append(y.numpy())
            index.append(i.numpy())
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return np.concatenate(logits), np.concatenate(labels).astype(int), np.concatenate(index)
