"""Where does the model look? Class-activation maps (via pytorch-grad-cam) at the original
image size, heatmap overlays, and a "look here" box.

One image's path::

    tensor N×C×S×S (letterboxed)  →  cam_at_input(model, x, method)   → N×S×S in [0, 1]
                                  →  unletterbox(cam, (h, w), (H, W)) → H×W in [0, 1]

``S`` is the model input; the letterbox padding is cropped and the rest resized to the
image's full original size (``meta["original_size"]`` when the reader decoded a JPEG at
reduced scale), so maps line up with the file's pixels and with COCO boxes.

The CAM layer comes from the model: ``model.spec.cam_layer`` (every registered model) or a
``cam_layer`` attribute. An ensemble is any module with ``members: list[nn.Module]`` and
``weights: list[float]``; its map is the weighted mean of its members' maps (each member
sees the ensemble's input and uses its own CAM layer), weights normalised to sum to 1.

Methods: ``gradcam``, ``gradcam++`` (gradient-based, for the fractured logit) and
``eigencam`` (gradient-free: first principal component of the CAM layer's activations, sign
chosen so the salient part is positive) and ``scorecam`` (gradient-free, one forward per
channel: slow on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fracdet.errors import FracdetError
from fracdet.transforms import letterbox_window
from fracdet.fracturemap import original_hw

METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam")
"""CAM methods by name; the first is the default."""
DEFAULT_METHOD = "gradcam"
MAP_METHODS = ("learned", "auto")
"""The model's own learned fracture map (no PyTorch), and ``auto``: it when the model has one, else Grad-CAM."""
_ALIASES = {"grad-cam": "gradcam", "gradcampp": "gradcam++", "grad-cam++": "gradcam++",
            "gradcamplusplus": "gradcam++", "eigen-cam": "eigencam", "score-cam": "scorecam",
            "map": "learned", "fracture-map": "learned"}

Box = tuple[float, float, float, float]
"""(x, y, width, height) in pixels of the original image, as in COCO."""


def method_name(method: str) -> str:
    """The canonical name of ``method``; FracdetError listing the known ones otherwise."""
    m = method.strip().lower()
    m = _ALIASES.get(m, m)
    if m not in METHODS + MAP_METHODS:
        raise FracdetError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS + MAP_METHODS)}")
    return m


def _cam_class(method: str) -> Any:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.eigen_cam import EigenCAM

    class SignedEigenCAM(EigenCAM):  # type: ignore[misc]
        """EigenCAM with the SVD sign fixed so the salient side is positive (the larger
        extreme of the projection), and a thin SVD (the full one costs C×C)."""

        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads,
                          eigen_smooth):  # noqa: ANN001
            return _signed_projection(activations)

    class QuietScoreCAM(ScoreCAM):  # type: ignore[misc]
        batch_size = 64

        def get_cam_weights(self, *args: Any, **kwargs: Any) -> Any:
            import tqdm

            original = tqdm.tqdm
            tqdm.tqdm = lambda it, *a, **k: it  # ScoreCAM prints a progress bar per image
            try:
                return super().get_cam_weights(*args, **kwargs)
            finally:
                tqdm.tqdm = original

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": SignedEigenCAM,
            "scorecam": QuietScoreCAM}[method_name(method)]


def _signed_projection(activations: np.ndarray) -> np.ndarray:
    """N×h×w projections of N×C×h×w activations on their first principal component."""
    out = []
    for a in np.nan_to_num(np.asarray(activations, dtype=np.float32)):
        flat = a.reshape(a.shape[0], -1).T  # (h·w) × C
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        proj = (flat @ vt[0]).reshape(a.shape[1:])
        out.append(-proj if abs(proj.min()) > abs(proj.max()) else proj)
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------- model structure
def members_of(model: nn.Module) -> list[tuple[nn.Module, float]] | None:
    """``[(member, weight), ...]`` (weights summing to 1) for an ensemble, else None."""
    members = getattr(model, "members", None)
    if members is None:
        return None
    members = list(members)
    weights = getattr(model, "weights", None)
    w = np.ones(len(members)) if weights is None else np.asarray(
        [float(v) for v in (weights.tolist() if torch.is_tensor(weights) else weights)], dtype=float)
    if len(w) != len(members) or not len(members) or w.sum() <= 0 or (w < 0).any():
        raise FracdetError(f"ensemble has {len(members)} member(s) but weights {list(w)}")
    return list(zip(members, (w / w.sum()).tolist()))


def cam_layer_of(model: nn.Module, name: str | None = None) -> nn.Module:
    """The module named ``name`` or by the model (``model.spec.cam_layer`` / ``model.cam_layer``)."""
    if name is None:
        spec = getattr(model, "spec", None)
        name = getattr(spec, "cam_layer", None) or getattr(model, "cam_layer", None)
    if not name:
        raise FracdetError(f"{type(model).__name__} names no CAM layer (spec.cam_layer)")
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise FracdetError(f"CAM layer {name!r} not found in {type(model).__name__}") from None


# ---------------------------------------------------------------- maps
def _normalise(maps: np.ndarray) -> np.ndarray:
    """Each map min-max scaled to [0, 1]; a flat map becomes all zeros. Non-finite → 0."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(axis=1)[:, None, None]
    span = flat.max(axis=1)[:, None, None] - lo
    out = np.where(span > 1e-12, (maps - lo) / np.maximum(span, 1e-12), 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _single_cam(model: nn.Module, x: torch.Tensor, method: str, layer: str | None) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    target_layer = cam_layer_of(model, layer)
    was_training = model.training
    x = x.detach().float().clone().requires_grad_(True)  # gradients flow even into a frozen model
    try:
        with torch.inference_mode(False), torch.enable_grad():
            with _cam_class(method)(model=model, target_layers=[target_layer]) as cam:
                maps = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return _normalise(maps)


def cam_at_input(model: nn.Module, x: torch.Tensor, method: str = DEFAULT_METHOD,
                 layer: str | None = None) -> np.ndarray:
    """N×S×S maps in [0, 1] for the input batch ``x`` (N×C×S×S), explaining the fractured
    logit. For an ensemble (see :func:`members_of`), the weighted mean of the members' maps."""
    if x.ndim != 4:
        raise FracdetError(f"expected an N×C×H×W batch, got shape {tuple(x.shape)}")
    method = method_name(method)
    parts = members_of(model)
    if parts is None:
        return _single_cam(model, x, method, layer)
    total = np.zeros((len(x), *x.shape[-2:]), dtype=np.float32)
    for member, weight in parts:
        total += weight * _single_cam(member, x, method, None)
    return np.clip(total, 0.0, 1.0)


def unletterbox(cam: np.ndarray, image_hw: tuple[int, int], out_hw: tuple[int, int] | None = None,
                mode: str = "letterbox") -> np.ndarray:
    """An S×S map at the model input → the map of the h×w image (``image_hw``) that was
    letterboxed, resized to ``out_hw`` (default ``image_hw``), float32 in [0, 1]."""
    size = cam.shape[-1]
    top, left, nh, nw = letterbox_window(int(image_hw[0]), int(image_hw[1]), size, mode)
    crop = torch.from_numpy(np.ascontiguousarray(cam[top:top + nh, left:left + nw], dtype=np.float32))
    out_h, out_w = out_hw or image_hw
    big = F.interpolate(crop[None, None], size=(int(out_h), int(out_w)), mode="bilinear", align_corners=False)
    return _normalise(big[0].numpy())[0]


def heatmaps(model: nn.Module, batch: torch.Tensor | np.ndarray, images: Sequence[Any], method: str = DEFAULT_METHOD,
             resize: str = "letterbox") -> list[np.ndarray]:
    """One H×W float32 map in [0, 1] per image at its original size. ``images`` are the
    XRays (``.pixels``, ``.meta``) that were transformed into ``batch``."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.array(batch, dtype=np.float32))
    maps = cam_at_input(model, batch, method)
    return [unletterbox(m, img.pixels.shape[:2], original_hw(img.pixels, img.meta), resize)
            for m, img in zip(maps, images)]


# ---------------------------------------------------------------- box
def top_box(heatmap: np.ndarray, threshold: float = 0.5) -> Box | None:
    """The "look here" box: bounding box (x, y, w, h) of the largest connected region where
    the map is at least ``threshold`` × its maximum; None for a flat (all-zero) map."""
    from scipy import ndimage

    peak = float(np.max(heatmap)) if heatmap.size else 0.0
    if not peak > 0:
        return None
    labels, n = ndimage.label(heatmap >= threshold * peak)
    if n == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == int(np.argmax(areas)) + 1)
    return float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


# ---------------------------------------------------------------- overlay
@dataclass
class OverlayStyle:
    cmap: str = "inferno"  # perceptually uniform
    alpha: float = 0.6  # opacity of the hottest colour; cold parts stay the radiograph
    true_colour: tuple[int, int, int] = (0, 230, 0)
    box_colour: tuple[int, int, int] = (0, 200, 255)
    fracture_colour: tuple[int, int, int] = (255, 60, 60)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_overlay(pixels: np.ndarray, heatmap: np.ndarray, text: str = "", method: str = "",
                   box: Box | None = None, true_boxes: Sequence[Box] = (),
                   style: OverlayStyle | None = None,
                   fracture_boxes: Sequence[Sequence[float]] = ()) -> Any:
    """A PIL RGB image: the radiograph in gray at the heatmap's (original) size with the map
    blended in a perceptual colour map, optional boxes (derived: cyan, true: green, the model's
    fracture boxes ``(x0, y0, x1, y1, score)``: red with their scores), and a legend band below
    with the colour scale and ``text`` (probability / verdict)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    st = style or OverlayStyle()
    h, w = heatmap.shape
    gray = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if gray.size != (w, h):
        gray = gray.resize((w, h), Image.BILINEAR)
    g = np.asarray(gray, dtype=np.float32)[..., None] / 255.0
    hm = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    colours = colormaps[st.cmap](hm)[..., :3].astype(np.float32)
    a = (st.alpha * hm)[..., None]
    rgb = (1.0 - a) * g + a * colours
    band = max(28, h // 14)
    canvas = np.zeros((h + band, w, 3), dtype=np.uint8)
    canvas[:h] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    lw = max(2, round(max(h, w) / 300))
    for b in true_boxes:
        draw.rectangle([b[0], b[1], b[0] + b[2], b[1] + b[3]], outline=st.true_colour, width=lw)
    if box is not None:
        draw.rectangle([box[0], box[1], box[0] + box[2], box[1] + box[3]], outline=st.box_colour, width=lw)
    for fb in fracture_boxes:
        draw.rectangle([fb[0], fb[1], fb[2], fb[3]], outline=st.fracture_colour, width=lw)
        draw.text((fb[0] + lw, max(0.0, fb[1] - max(10, h // 40) - lw)), f"{fb[4]:.2f}", fill=st.fracture_colour,
                  font=_font(max(10, h // 40)))
    # legend: colour bar 0..1 on the left of the band, text to its right
    fs = max(10, band // 2 - 2)
    font = _font(fs)
    bar_w = max(60, w // 5)
    x0, y0, bh = band // 4, band // 4, band // 2 - 2
    ramp = (colormaps[st.cmap](np.linspace(0, 1, bar_w))[:, :3] * 255).astype(np.uint8)
    img.paste(Image.fromarray(np.repeat(ramp[None], bh, axis=0)), (x0, h + y0))
    draw.text((x0, h + y0 + bh), "0", fill=(255, 255, 255), font=_font(max(8, fs // 2)))
    draw.text((x0 + bar_w - fs // 2, h + y0 + bh), "1", fill=(255, 255, 255), font=_font(max(8, fs // 2)))
    legend = " ".join(p for p in (method, text) if p)
    if true_boxes:
        legend += "  [green: true box]"
    if box is not None:
        legend += "  [cyan: look here]"
    if fracture_boxes:
        legend += "  [red: fracture boxes]"
    room = w - (x0 + bar_w + band // 3) - 4
    while fs > 8 and draw.textlength(legend, font=font) > room:  # shrink to fit narrow images
        fs -= 1
        font = _font(fs)
    draw.text((x0 + bar_w + band // 3, h + (band - fs) // 2), legend, fill=(255, 255, 255), font=font)
    return img


def save_overlay(path: str | Path, pixels: np.ndarray, heatmap: np.ndarray, **kwargs: Any) -> Path:
    """Write :func:`render_overlay` as a PNG; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    render_overlay(pixels, heatmap, **kwargs).save(p, format="PNG", optimize=False)
    return p


def verdict_text(pred: Any) -> str:
    """'P(fracture) 0.83 -> fractured (threshold 0.41)' for a Prediction, plus its
    operating-point verdict (fracture / doubt / no fracture) when it has one."""
    if getattr(pred, "probability", None) is None:
        return ""
    text = f"P(fracture) {pred.probability:.2f} -> {pred.label} (threshold {pred.threshold:.2f})"
    verdict = getattr(pred, "verdict", None)
    return f"{text}, verdict: {verdict}" if verdict else text


__all__ = ["Box", "DEFAULT_METHOD", "METHODS", "OverlayStyle", "cam_at_input", "cam_layer_of", "heatmaps",
           "letterbox_window", "members_of", "method_name", "original_hw", "render_overlay", "save_overlay",
           "top_box", "unletterbox", "verdict_text"]
