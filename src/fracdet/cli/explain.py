"""``fracdet explain``: where the model looks. For each image (files or folders,
recursively) and each ``--method``: ``NAME.METHOD.png`` (the radiograph at its original
size with the class-activation map, a legend and the verdict) and ``NAME.METHOD.npy`` (the
raw H×W float32 map in [0, 1]); ``--box`` adds the "look here" box to the picture and to
``explanations.json`` (one entry per image and method).

:class:`OverlayWriter` is shared with ``fracdet predict --heatmaps``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fracdet.cli.options import add_model_option


def heatmap_dir(value: str, out: str | None) -> Path:
    """``--heatmaps DIR``; with no DIR, beside ``--out`` (``rows.csv`` → ``rows-heatmaps/``) or ./heatmaps."""
    if value:
        return Path(value)
    if out:
        o = Path(out)
        return o.with_name(o.stem + "-heatmaps")
    return Path("heatmaps")


class OverlayWriter:
    """Writes a prediction's heatmap as ``NAME.METHOD.png`` + ``.npy`` into ``out_dir`` (names
    made unique), re-reading the image for the picture; then drops the map from the
    prediction so long runs do not keep every map in memory. ``records`` lists what was written."""

    def __init__(self, out_dir: str | Path, method: str, dicom: Any = None, box: bool = False,
                 box_threshold: float = 0.5) -> None:
        from fracdet.explain import method_name

        self.out_dir = Path(out_dir)
        self.method = method_name(method)
        self.dicom = dicom
        self.box = box
        self.box_threshold = box_threshold
        self.used: set[str] = set()
        self.records: list[dict[str, Any]] = []

    def _name(self, pred: Any) -> str:
        stem = Path(str(pred.path)).stem or "image"
        if "frame" in (pred.meta or {}) and (pred.meta or {}).get("frames", 1) > 1:
            stem += f"-frame{pred.meta['frame']}"
        name, k = stem, 2
        while name in self.used:
            name, k = f"{stem}-{k}", k + 1
        self.used.add(name)
        return name

    def _pixels(self, pred: Any) -> Any:
        from fracdet.io.dicom import DicomOptions, dicom_options, read_frames
        from fracdet.io.images import is_dicom_file, read_image

        path = Path(str(pred.path))
        if is_dicom_file(path):
            frames = read_frames(path, self.dicom or DicomOptions())
            return frames[int(pred.meta.get("frame", 0))].pixels
        with dicom_options(self.dicom or DicomOptions()):
            return read_image(path).pixels  # full resolution for the picture

    def add(self, pred: Any) -> dict[str, Any] | None:
        import numpy as np

        from fracdet.explain import save_overlay, top_box, verdict_text

        if pred.heatmap is None or pred.path is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self._name(pred)}.{self.method.replace('+', 'p')}"
        hm = pred.heatmap
        box = top_box(hm, self.box_threshold) if self.box else None
        np.save(self.out_dir / f"{name}.npy", hm.astype(np.float32))
        text, shown = verdict_text(pred), hm
        if self.method == "learned" and float(hm.max()) > 0:  # probabilities: shown scaled to their peak
            text, shown = f"{text}; map peak {float(hm.max()):.2f}", hm / float(hm.max())
        png = save_overlay(self.out_dir / f"{name}.png", self._pixels(pred), shown,
                           text=text, method=self.method, box=box, fracture_boxes=pred.boxes or ())
        rec = {"path": str(pred.path), "method": self.method, "probability": pred.probability,
               "label": pred.label, "overlay": str(png), "heatmap": str(self.out_dir / f"{name}.npy")}
        if self.box:
            rec["box"] = list(box) if box is not None else None
        if pred.boxes is not None:
            rec["boxes"] = [list(b) for b in pred.boxes]
        self.records.append(rec)
        pred.heatmap = None
        return rec


METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam")  # = fracdet.explain.METHODS (no torch import here)


def add_explain(sub: Any) -> None:
    p = sub.add_parser(
        "explain", help="heatmaps of where the model looks (Grad-CAM, Grad-CAM++, EigenCAM, ScoreCAM)",
        description="Class-activation heatmaps for image files and folders (recursively): an overlay "
        "PNG at the original size with legend and verdict, and the raw map (.npy), per image and method.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    add_model_option(p)
    p.add_argument("--out", default="explanations", help="output folder (default ./explanations)")
    p.add_argument("--method", action="append", metavar="METHOD",
                   help=f"map, repeatable: auto (default: the model's learned fracture map when it has one, "
                   f"else gradcam), learned, or a CAM method: {', '.join(METHODS)}; "
                   "scorecam runs one forward pass per channel (slow on a CPU)")
    p.add_argument("--box", action="store_true",
                   help="draw the 'look here' box (largest region >= --box-threshold x the map's peak) "
                   "and list it in explanations.json as [x, y, w, h]")
    p.add_argument("--box-threshold", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(a: argparse.Namespace) -> int:
    from fracdet.explain import method_name
    from fracdet.fsutil import write_json
    from fracdet.io.images import iter_image_files
    from fracdet.inference import load_model
    from fracdet.progress import progress_over

    methods = [method_name(m) for m in (a.method or ["auto"])]
    if not 0.0 < a.box_threshold <= 1.0:
        print("error: --box-threshold must be in (0, 1]", file=sys.stderr)
        return 2
    files = list(iter_image_files(a.paths))
    if not files:
        print("error: no image files found in " + ", ".join(a.paths), file=sys.stderr)
        return 2
    predictor = load_model(a.model, backend="torch")
    methods = [predictor.heatmap_method(m) for m in methods]
    records: list[dict[str, Any]] = []
    bad = 0
    for method in methods:
        writer = OverlayWriter(a.out, method, box=a.box, box_threshold=a.box_threshold)
        stream = predictor.predict_paths(files, batch_size=a.batch_size, heatmaps=True, cam_method=method)
        for pred in progress_over(stream, f"explaining ({method})", total=len(files)):
            if not pred.ok:
                bad += method == methods[0]
                if method == methods[0]:
                    print(f"error: {pred.path}: {pred.error}", file=sys.stderr)
                continue
            if not pred.assessable:  # no map for an image the model does not judge
                if method == methods[0]:
                    print(f"not assessable: {pred.path}: {pred.reason}", file=sys.stderr)
                continue
            writer.add(pred)
        records.extend(writer.records)
    write_json(Path(a.out) / "explanations.json", records)
    for r in records:
        box = f"  box {[round(v) for v in r['box']]}" if r.get("box") else ""
        print(f"{r['overlay']}  P={r['probability']:.3f} {r['label']}{box}")
    return 1 if bad else 0
