"""The one prediction path: image → transform from the artifact → model → calibrated
probability → threshold from the artifact → label.  CLI, API and web page all use
:class:`Predictor`."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from fracdet.artifact import ModelArtifact, load_artifact
from fracdet.calibration import calibrated_probability
from fracdet.errors import FracdetError, ImageReadError
from fracdet.io.images import XRay, iter_image_files, read_image
from fracdet.transforms import build_transforms

log = logging.getLogger(__name__)


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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_row(self) -> dict[str, Any]:
        """Flat row for CSV/JSON output."""
        d = asdict(self)
        d.pop("meta")
        return d


class Predictor:
    """A loaded model ready to predict; built from an artifact and nothing else."""

    def __init__(self, artifact: ModelArtifact, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.artifact = artifact
        self.model = artifact.build_model().to(memory_format=torch.channels_last)
        self.transform = build_transforms(artifact.preprocess)
        self.threshold = artifact.threshold
        self.temperature = artifact.temperature
        self.labels = artifact.labels

    @classmethod
    def from_path(cls, path: str | Path | None = None) -> "Predictor":
        return cls(load_artifact(path))

    def _results(self, logits: np.ndarray, items: Sequence[XRay]) -> list[Prediction]:
        probs = calibrated_probability(logits, self.temperature)
        return [
            Prediction(
                path=x.path, probability=float(p), label=self.labels[int(p >= self.threshold)],
                threshold=self.threshold, logit=float(z), meta=dict(x.meta),
            )
            for x, p, z in zip(items, probs, logits)
        ]

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Raw logits for a batch of prepared inputs N×C×S×S."""
        return self.model(batch.contiguous(memory_format=torch.channels_last)).float().numpy()

    def predict(self, image: str | Path | np.ndarray | XRay) -> Prediction:
        """Predict one image given as a path, an H×W [0, 1] array (bone bright) or an XRay."""
        if isinstance(image, np.ndarray):
            image = XRay(pixels=np.asarray(image, dtype=np.float32), path=None, meta={})
        elif not isinstance(image, XRay):
            image = read_image(image, min_size=self.artifact.preprocess.input_size)
        return self._results(self.logits(self.transform(image.pixels)[None]), [image])[0]

    def predict_paths(
        self, paths: Iterable[str | Path], batch_size: int = 32,
        on_result: Callable[[Prediction], None] | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for files and folders (recursively), in batches; a bad file
        yields one error row and the batch goes on."""
        pending: list[tuple[XRay, torch.Tensor]] = []
        size = self.artifact.preprocess.input_size

        def flush() -> list[Prediction]:
            if not pending:
                return []
            xs = torch.stack([t for _, t in pending])
            out = self._results(self.logits(xs), [x for x, _ in pending])
            pending.clear()
            return out

        for path in iter_image_files(paths):
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    xray = read_image(path, min_size=size)
                for w in caught:
                    log.warning("%s", w.message)
                pending.append((xray, self.transform(xray.pixels)))
            except ImageReadError as exc:
                yield Prediction(path=str(path), probability=None, label=None, threshold=self.threshold, error=exc.reason)
                continue
            except FracdetError as exc:
                yield Prediction(path=str(path), probability=None, label=None, threshold=self.threshold, error=str(exc))
                continue
            if len(pending) >= batch_size:
                yield from flush()
        yield from flush()


def load_model(path: str | Path | None = None) -> Predictor:
    """Load an artifact (the shipped default when ``path`` is None) as a :class:`Predictor`."""
    return Predictor.from_path(path)


@torch.inference_mode()
def collect_logits(model: torch.nn.Module, samples: Sequence[Any], transform: Any,
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and sample indices for labelled samples (unreadable files are left
    out with a warning, so the indices say which samples the rows belong to)."""
    from fracdet.data.loader import make_loader

    model.eval()
    logits, labels, index = [], [], []
    for x, y, i in make_loader(samples, transform, batch_size=batch_size):
        if len(x):
            logits.append(model(x.contiguous(memory_format=torch.channels_last)).float().numpy())
            labels.append(y.numpy())
            index.append(i.numpy())
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return np.concatenate(logits), np.concatenate(labels).astype(int), np.concatenate(index)
