"""Is a film one this model can judge?  The two steps of the out-of-distribution refusal.

1. Before the network: :func:`fracdet.io.quality.image_problem` (too small, blank, colour, noise).
2. After it, from the ``features`` output of the same graph run as the logit: the model's
   :class:`~fracdet.ood.OodReference` — a film too far from the training films is *not
   assessable*; one that its inversion detector calls a negative film is, when confident
   (:data:`INVERTED_CONFIDENT`), judged again as its positive (1 − pixels) with a warning
   (refused if that positive is itself out of distribution); an unsure one is refused when it is
   also out of distribution, else judged with a warning to check how it is displayed.

No network pass is added for films in distribution. Numpy only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from fracdet.errors import ArtifactError
from fracdet.io.quality import image_problem
from fracdet.ood import OodReference
from fracdet.transforms import letterbox_window

log = logging.getLogger(__name__)
INVERTED_CONFIDENT = 0.9
"""A film whose inversion probability is at least this is corrected (judged as its positive)."""
INVERTED_LIKELY = 0.5
"""A film whose inversion probability is at least this (but below :data:`INVERTED_CONFIDENT`) is
refused when it is also out of distribution, else judged with a warning (measured: pydicom-data's
correctly displayed leg radiograph with white collimation borders scores 0.56)."""
INVERTED_WARNING = "inverted (negative) film: judged on its positive (1 - pixels)"
WINDOW_KEY = "input_window"  # meta: where the image lies in the model input (top, left, height, width)


@dataclass(frozen=True)
class Judgement:
    """What the feature check says about one film: refuse it (``reason``), correct it
    (``invert``), or let it through (neither; ``warning``: judged, but a reader should check)."""

    reason: str | None = None
    invert: bool = False
    warning: str | None = None


class Assessor:
    """The checks of one model: its OOD reference (None: image checks only)."""

    def __init__(self, reference: OodReference | None, input_size: int, resize: str) -> None:
        self.reference = reference
        self.input_size, self.resize = input_size, resize

    def screen(self, pixels: np.ndarray, meta: Mapping[str, Any]) -> str | None:
        """The cheap image checks (before the network): a reason, or None."""
        return image_problem(pixels, meta)

    def window(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Where an H×W image lies in the model input (for correcting an inverted film)."""
        return letterbox_window(int(shape[0]), int(shape[1]), self.input_size, self.resize)

    def judge(self, features: np.ndarray | None, n: int) -> list[Judgement]:
        """One :class:`Judgement` for each of ``n`` films from their N×C features (None: all pass)."""
        if self.reference is None or features is None:
            return [Judgement() for _ in range(n)]
        ref = self.reference
        dist, p_inv = ref.distance(features), ref.inverted_probability(features)
        out = []
        for d, p in zip(dist, p_inv):
            if p >= INVERTED_CONFIDENT:
                out.append(Judgement(invert=True))
            elif d > ref.threshold:
                out.append(Judgement(reason=f"unlike the films this model was built on (feature distance {d:.1f} > "
                                            f"{ref.threshold:.1f})" + ("; possibly an inverted film" if p >= INVERTED_LIKELY
                                                                       else "")))
            elif p >= INVERTED_LIKELY:  # like the model's films, yet perhaps a negative (e.g. white collimation)
                out.append(Judgement(warning=f"possibly an inverted (negative) film (probability {p:.2f}, too unsure "
                                             "to correct): check how it is displayed"))
            else:
                out.append(Judgement())
        return out

    def judge_corrected(self, features: np.ndarray) -> list[str | None]:
        """For films judged again as their positive: a refusal reason each (None: accepted)."""
        ref = self.reference
        assert ref is not None
        return [None if d <= ref.threshold else "inverted film (its positive is still unlike the model's films)"
                for d in ref.distance(features)]


def invert_prepared(prepared: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The positive of a prepared 1×S×S film: 1 − pixels inside its window, the padding kept."""
    top, left, h, w = window
    out = np.array(prepared, dtype=np.float32, copy=True)
    out[..., top: top + h, left: left + w] = 1.0 - out[..., top: top + h, left: left + w]
    return out


def check_features(reference: OodReference | None, output_names: list[str] | None,
                   n_features: int | None) -> tuple[OodReference | None, str]:
    """The reference to apply to a graph's outputs and a sentence saying so (dropped when the
    graph gives no ``features`` output; :class:`ArtifactError` when they disagree in size)."""
    if reference is None:
        return None, "no OOD reference in the model: image checks only (fit one with `fracdet fit-ood`)"
    if output_names is None:
        return None, "the PyTorch backend gives no features here: image checks only"
    if "features" not in output_names:
        return None, "the graph gives no features output (an ensemble, or a graph exported before features): image checks only"
    if n_features is not None and n_features != reference.n_features:
        raise ArtifactError(f"invalid model file: the graph gives {n_features} features, its OOD reference "
                            f"expects {reference.n_features}")
    return reference, "image checks and the feature-space OOD reference"
