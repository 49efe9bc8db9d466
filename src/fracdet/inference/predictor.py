"""The one prediction path: image → transform from the artifact → graph → calibrated
probability → the model's :class:`~fracdet.operating.Decision` → :class:`Prediction`.
The CLI, the Python API and every later face build one :class:`Predictor` and call it.

Imports no PyTorch: the stored onnxruntime graphs run the network.  PyTorch is reached by
module name — only for the ``torch`` backend, test-time augmentation and heatmaps
(:mod:`fracdet.models.torch_backend`, :mod:`fracdet.explain`) — so that a plain prediction
works where PyTorch is not installed.

DICOM files give one :class:`Prediction` per frame (``meta["frame"]``), carrying the DICOM
identifiers in ``meta`` and in their output rows.

Films the model cannot judge get the verdict ``not assessable`` and a reason
(:mod:`fracdet.inference.assess`): image checks before the network, then the model's OOD
reference on the ``features`` output of the same run (``assess=False`` turns both off).
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from fracdet.artifact import ModelArtifact, load_artifact
from fracdet.calibration import apply_calibration
from fracdet.errors import FracdetError, ImageReadError
from fracdet.fracturemap import (DEFAULT_BOX_THRESHOLD, PROPOSAL_FLOOR, centre_boxes, map_boxes, map_to_image,
                                 original_hw)
from fracdet.inference.assess import INVERTED_WARNING, WINDOW_KEY, Assessor, Judgement, check_features, invert_prepared
from fracdet.inference.backends import choose_backend
from fracdet.inference.onnx import OnnxRunner
from fracdet.inference.prediction import Prediction
from fracdet.io.dicom import DicomOptions, dicom_options, read_frames
from fracdet.io.images import is_dicom_file, iter_image_files, read_image
from fracdet.io.xray import XRay
from fracdet.operating import Decision
from fracdet.transforms import build_transforms

log = logging.getLogger(__name__)

TORCH_BACKEND = "fracdet.models.torch_backend"  # imported by name: see the module docstring
EXPLAIN = "fracdet.explain"
LEARNED = "learned"  # the heatmap method of a model's own fracture map (no PyTorch)


def _no_pixels(pixels: np.ndarray) -> np.ndarray:
    """A stand-in of ``pixels``' shape holding no memory: a prediction keeps its image's path,
    meta and size (for mapping boxes back), not its pixels."""
    return np.broadcast_to(np.float32(0.0), pixels.shape[:2])


class Predictor:
    """A loaded model ready to predict; built from an artifact and nothing else."""

    def __init__(self, artifact: ModelArtifact, threads: int | None = None, backend: str = "auto",
                 tta: bool = False, assess: bool = True) -> None:
        self.artifact = artifact
        self.threads = threads
        self.backend = choose_backend("torch" if tta else backend, artifact)
        self.tta = tta
        self._torch: Any = None  # the PyTorch side (network, TTA), built on first use
        self._onnx: Callable[[np.ndarray], np.ndarray] | None = None
        if self.backend == "onnx":
            self._onnx = OnnxRunner(artifact.float32_graph(), threads=threads)
        elif self.backend == "int8":
            self._onnx = OnnxRunner(artifact.int8_onnx or b"", threads=threads)
        self.transform = build_transforms(artifact.preprocess)
        self.decision = Decision.of(artifact)
        self.temperature = artifact.temperature
        self.calibration = artifact.calibration_in_use()
        self.assessor = self._assessor() if assess else None

    def _assessor(self) -> Assessor:
        """The out-of-distribution checks this model and backend allow (one log line says which)."""
        runner = self._onnx if isinstance(self._onnx, OnnxRunner) else None
        reference, how = check_features(self.artifact.ood_reference(), runner.output_names if runner else None,
                                        runner.output_width("features") if runner else None)
        log.info("out-of-distribution check: %s", how)
        return Assessor(reference, self.artifact.preprocess.input_size, self.artifact.preprocess.resize)

    # the decision's numbers, as attributes (the Python API has always had them)
    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def labels(self) -> list[str]:
        return list(self.decision.labels)

    @property
    def doubt_threshold(self) -> float:
        return self.decision.doubt_threshold

    @property
    def fracture_threshold(self) -> float:
        return self.decision.fracture_threshold

    @property
    def torch_side(self) -> Any:
        """The PyTorch network and its runner (needs PyTorch; see :mod:`fracdet.models.torch_backend`)."""
        if self._torch is None:
            self._torch = importlib.import_module(TORCH_BACKEND).TorchRunner(self.artifact, self.threads, self.tta)
        return self._torch

    @property
    def model(self) -> Any:
        """The PyTorch network (for the torch backend, TTA, heatmaps)."""
        return self.torch_side.model

    @classmethod
    def from_path(cls, path: str | Path | None = None, backend: str = "auto", assess: bool = True) -> "Predictor":
        return cls(load_artifact(path), backend=backend, assess=assess)

    def logits(self, batch: Any) -> np.ndarray:
        """Raw logits for a batch of prepared inputs N×C×S×S (onnxruntime, or PyTorch)."""
        return self._outputs(batch)["logit"]

    def _outputs(self, batch: Any) -> dict[str, np.ndarray]:
        """The graph's named outputs (``logit``, and ``features`` where the graph has them)."""
        if isinstance(self._onnx, OnnxRunner):
            return self._onnx.run(np.asarray(batch, dtype=np.float32))
        return self.torch_side.outputs(batch) if self._onnx is None else {"logit": self._onnx(batch)}

    @property
    def has_map(self) -> bool:
        """Whether the model has a learned fracture map (``fracture_map`` output)."""
        return bool(self.artifact.model_config.get("map_stride"))

    def heatmap_method(self, cam_method: str = "auto") -> str:
        """``auto``: the learned map when the model has one, else Grad-CAM; else ``cam_method``."""
        if cam_method == "auto":
            return LEARNED if self.has_map else "gradcam"
        if cam_method == LEARNED and not self.has_map:
            raise FracdetError("this model has no learned fracture map; use a CAM method (e.g. --cam-method gradcam)")
        return cam_method

    def _add_maps(self, preds: Sequence[Prediction], outputs: dict[str, np.ndarray], items: Sequence[XRay],
                  heatmap: bool) -> None:
        """Each assessed prediction's fracture boxes (always) and, with ``heatmap``, its learned map
        at the original size, from the graph's ``fracture_map`` (nothing when the model has none),
        and a box head's proposals down to PROPOSAL_FLOOR (for evaluation)."""
        maps = outputs.get("fracture_map")
        if maps is None:
            return
        pre, settings = self.artifact.preprocess, self.artifact.localisation
        t = float(settings.get("box_threshold", DEFAULT_BOX_THRESHOLD))
        box_maps = outputs.get("box_map")
        for k, (pred, x, m) in enumerate(zip(preds, items, maps)):
            if pred.probability is None:
                continue
            hw, out_hw = x.pixels.shape[:2], original_hw(x.pixels, x.meta)
            if box_maps is not None:  # a box head: its boxes, not the map's regions
                centre_t = float(settings.get("centre_threshold", DEFAULT_BOX_THRESHOLD))
                found = centre_boxes(box_maps[k], pre.input_size, hw, out_hw,
                                     min(centre_t, PROPOSAL_FLOOR) if heatmap else centre_t, pre.resize)
                pred.boxes = [b for b in found if b[4] >= centre_t]  # best first: a prefix of the proposals
                if heatmap:
                    pred.proposals = found
            else:
                pred.boxes = map_boxes(m, pre.input_size, hw, out_hw, t, pre.resize)
            if heatmap:
                pred.heatmap = map_to_image(m, pre.input_size, hw, out_hw, pre.resize)

    def predict_batch(self, batch: Any, items: Sequence[XRay], prepared: Sequence[np.ndarray] = (),
                      learned_maps: bool = False, assess: bool = True) -> list[Prediction]:
        """Predictions for a prepared batch (N×C×S×S) of ``items``: one run of the graph, the
        out-of-distribution judgement (``assess``; ``prepared`` lets an inverted film be judged
        again upright), the calibrated decision, and the model's boxes (its learned maps too with
        ``learned_maps``)."""
        outputs = self._outputs(batch)
        preds = self._results(outputs, items, prepared, assess)
        self._add_maps(preds, outputs, items, learned_maps)
        return preds

    def _results(self, outputs: dict[str, np.ndarray], items: Sequence[XRay],
                 prepared: Sequence[np.ndarray] = (), assess: bool = True) -> list[Prediction]:
        """Predictions from the graph's outputs; ``assess=False``: none refused (evaluation scores
        the model on every readable film)."""
        logits = np.array(outputs["logit"], dtype=np.float32).reshape(-1)
        judged = (self.assessor.judge(outputs.get("features"), len(items)) if self.assessor is not None and assess
                  else [Judgement() for _ in items])
        reasons: list[str | None] = [j.reason for j in judged]
        warns: list[str | None] = [j.warning for j in judged]
        fix = [i for i, j in enumerate(judged) if j.invert]
        if fix:  # confident negatives: judged again as their positive (one more pass for those only)
            if len(prepared) != len(items):
                for i in fix:
                    reasons[i] = "inverted film"
            else:
                again = self._outputs(self.transform.finish_batch(
                    [invert_prepared(prepared[i], items[i].meta[WINDOW_KEY]) for i in fix]))
                for k, (i, why) in enumerate(zip(fix, self.assessor.judge_corrected(again["features"]))):  # type: ignore[union-attr]
                    reasons[i], warns[i] = why, (None if why else INVERTED_WARNING)
                    logits[i] = again["logit"][k]
        probs = apply_calibration(logits, self.calibration)
        rule = self.decision
        return [
            Prediction.not_assessable(x.path, why, rule.threshold, x.meta) if why else
            Prediction(path=x.path, probability=float(p), label=rule.label(float(p)), threshold=rule.threshold,
                       logit=float(z), meta=dict(x.meta), verdict=rule.verdict(float(p)), warning=w)
            for x, p, z, why, w in zip(items, probs, logits, reasons, warns)
        ]

    def _screen(self, x: XRay) -> Prediction | None:
        """The image checks before the network: a not-assessable row, or None (then the
        image's window in the model input is noted for correcting an inverted film)."""
        if self.assessor is None:
            return None
        why = self.assessor.screen(x.pixels, x.meta)
        if why:
            return Prediction.not_assessable(x.path, why, self.threshold, x.meta)
        x.meta[WINDOW_KEY] = self.assessor.window(x.pixels.shape)
        return None

    def _heatmaps(self, batch: np.ndarray, images: Sequence[XRay], method: str) -> list[np.ndarray]:
        explain = importlib.import_module(EXPLAIN)
        return explain.heatmaps(self.model, batch, images, method, self.artifact.preprocess.resize)

    def predict(self, image: str | Path | np.ndarray | XRay,
                dicom: DicomOptions | None = None, heatmap: bool = False,
                cam_method: str = "auto") -> Prediction:
        """Predict one image given as a path, an H×W [0, 1] array (bone bright) or an XRay
        (a multi-frame DICOM path: frame 0; :meth:`predict_paths` gives every frame);
        ``heatmap=True``: the map at the original size — ``auto``: the learned fracture map when the
        model has one, else Grad-CAM; a CAM method (``cam_method``) needs PyTorch."""
        if isinstance(image, np.ndarray):
            image = XRay(pixels=np.asarray(image, dtype=np.float32), path=None, meta={})
        elif not isinstance(image, XRay):
            with dicom_options(dicom or DicomOptions()):
                image = read_image(image, min_size=self.artifact.preprocess.input_size)
        refused = self._screen(image)
        if refused is not None:
            return refused
        prepared = self.transform.prepare(image.pixels)
        batch = self.transform.finish_batch([prepared])
        method = self.heatmap_method(cam_method) if heatmap else ""
        pred = self.predict_batch(batch, [image], [prepared], method == LEARNED)[0]
        if heatmap and pred.assessable and method != LEARNED:
            pred.heatmap = self._heatmaps(batch, [image], method)[0]
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
        dicom: DicomOptions | None = None, heatmaps: bool = False, cam_method: str = "auto",
    ) -> Iterator[Prediction]:
        """Stream predictions for files and folders (recursively), in batches, in input
        order; a bad file yields one error row and the batch goes on. A DICOM file gives
        one prediction per frame; ``dicom`` sets how DICOM is read (``force``, ``window``).

        Files are read one or two ahead in one background thread while onnxruntime runs the
        network (measured on 2 cores: +8% end to end against reading in line; a second reading
        thread or onnxruntime on one thread was slower); multi-frame DICOM is read in line."""
        queue: list[tuple[XRay, np.ndarray] | Prediction] = []  # error rows keep their place
        size = self.artifact.preprocess.input_size
        dicom = dicom or DicomOptions()
        buffer = np.empty((batch_size, self.artifact.preprocess.channels, size, size), np.float32)  # reused
        n_ready = 0
        method = self.heatmap_method(cam_method) if heatmaps else ""
        cams = heatmaps and method != LEARNED  # CAMs need the full pixels and PyTorch

        def flush() -> list[Prediction]:
            ready = [q for q in queue if not isinstance(q, Prediction)]
            batch = self.transform.finish_batch([t for _, t in ready], out=buffer) if ready else None
            results = (self.predict_batch(batch, [x for x, _ in ready], [t for _, t in ready], method == LEARNED)
                       if ready else [])
            done = iter(results)
            out = [q if isinstance(q, Prediction) else next(done) for q in queue]
            if cams and ready:  # each prediction carries its CAM
                maps = iter(self._heatmaps(batch.copy(), [x for x, _ in ready], method))  # type: ignore[union-attr]
                for q, o in zip(queue, out):
                    if not isinstance(q, Prediction):
                        o.heatmap = next(maps)
            queue.clear()
            return out

        def load(path: Path) -> Iterator[tuple[XRay, np.ndarray] | Prediction]:
            """The file's resized 1×S×S images, frame by frame (normalised per batch by
            ``flush``), or its error row.  Only the small resized image is kept per frame (and
            the full pixels when heatmaps need them), so a 500-frame file does not pile up."""
            caught: list[warnings.WarningMessage] = []
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for x in self._read(path, size, dicom):  # DICOM frames decode one at a time
                        refused = self._screen(x)
                        if refused is not None:
                            yield refused
                            continue
                        prepared = self.transform.prepare(x.pixels)
                        yield (x if cams else XRay(_no_pixels(x.pixels), x.path, x.meta)), prepared
            except ImageReadError as exc:
                yield self._error_row(path, exc.reason, exc)
            except FracdetError as exc:
                yield self._error_row(path, str(exc), exc)
            finally:
                for w in caught:
                    log.warning("%s", w.message)

        for item in _read_ahead(iter_image_files(paths), load):
            queue.append(item)
            if isinstance(item, Prediction):
                if n_ready == 0:
                    yield from flush()  # nothing waiting: report the error now
                continue
            n_ready += 1
            if n_ready >= batch_size:
                yield from flush()
                n_ready = 0
        yield from flush()


READ_AHEAD = 2  # files read ahead of the network (bounded: memory stays flat)


def _read_ahead(paths: Iterable[Path], load: Callable[[Path], Iterator[Any]]) -> Iterator[Any]:
    """``load(path)``'s items for each path, in order, the next files read in one background
    thread while the caller works.  DICOM files (possibly hundreds of frames) are read in line,
    frame by frame, so at most :data:`READ_AHEAD` ordinary images wait in memory."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="fracdet-read") as pool:
        waiting: deque[tuple[Path, Any]] = deque()
        source = iter(paths)

        def top_up() -> None:
            while len(waiting) < READ_AHEAD:
                path = next(source, None)
                if path is None:
                    return
                waiting.append((path, None if is_dicom_file(path) else pool.submit(lambda p=path: list(load(p)))))

        top_up()
        while waiting:
            path, future = waiting.popleft()
            if future is None:
                top_up()
                yield from load(path)
            else:
                items = future.result()
                top_up()
                yield from items


def load_model(path: str | Path | None = None, backend: str = "auto", tta: bool = False,
               threads: int | None = None, assess: bool = True) -> Predictor:
    """Load an artifact (the shipped default when ``path`` is None) as a :class:`Predictor`;
    ``backend`` is 'auto' (see :func:`~fracdet.inference.backends.choose_backend`), 'int8',
    'onnx' (float32) or 'torch'; ``tta``: test-time augmentation (PyTorch);
    ``threads``: onnxruntime's intra-op threads (default: this process's CPUs);
    ``assess=False``: no out-of-distribution refusal (every readable image gets a verdict)."""
    return Predictor(load_artifact(path), backend=backend, tta=tta, threads=threads, assess=assess)
