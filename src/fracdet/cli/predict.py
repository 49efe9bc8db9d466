"""``fracdet predict``: files or folders in, one row per image out (CSV/JSON), errors as rows.

DICOM files (``.dcm`` or any name with the DICM preamble) give one row per frame, with
their study/series/SOP UIDs, modality, body part and view. ``--by-study`` combines the
views of a study (DICOM StudyInstanceUID; for other images the ``--study-map`` CSV, else
each file is its own study) into one verdict listed above its views.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from fracdet.cli.options import add_backend_option, add_model_option

log = logging.getLogger(__name__)


def _window_arg(text: str) -> int | None:
    if text.strip().lower() in ("none", "off", "minmax", "min-max"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a window index (0, 1, ...) or 'none', got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the window index must be 0 or more")
    return value


def add_predict(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="predict files or folders (recursively); images and DICOM",
        description="Predict image files and folders (recursively). DICOM files — .dcm or "
        "extensionless with the DICM preamble — are read as a viewer shows them and give "
        "one row per frame.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    add_model_option(p)
    p.add_argument("--out", help="write rows to FILE (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per network call (default 8: fastest measured on a 2-core CPU)")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the probabilities of the image, its mirror and "
                   "±10° rotations (4× slower; PyTorch backend)")
    add_backend_option(p)
    p.add_argument("--no-ood", action="store_true",
                   help="no out-of-distribution refusal: give a verdict for every readable image, even blank, "
                   "colour, noise or other images the model was not built for (default: those are "
                   "'not assessable', with the reason)")
    h = p.add_argument_group("heatmaps")
    h.add_argument("--heatmaps", nargs="?", const="", default=None, metavar="DIR",
                   help="also write a heatmap overlay PNG and the raw map (.npy) per image into DIR "
                   "(default: beside --out, as OUT-heatmaps/, else ./heatmaps)")
    h.add_argument("--cam-method", default="auto",
                   help="map for --heatmaps: auto (the model's learned fracture map when it has one, else "
                   "gradcam), learned, or a CAM method: gradcam, gradcam++, eigencam, scorecam")
    d = p.add_argument_group("DICOM")
    d.add_argument("--force", action="store_true",
                   help="also predict DICOM that is refused by default (CT, MR, US... modalities, "
                   "unsupported photometric interpretations); results are not meaningful there")
    d.add_argument("--dicom-window", type=_window_arg, default=0, metavar="INDEX|none",
                   help="which stored VOI LUT / window to apply (default 0, the first, as a viewer "
                   "opens it); 'none' stretches the min-max of the modality values instead")
    d.add_argument("--dicom-out", metavar="DIR",
                   help="also write DICOM results for the DICOM inputs, as the DICOM node does: per study a "
                   "TID 1500 structured report and one secondary capture per image (needs fracdet[dicomnode])")
    s = p.add_argument_group("studies")
    s.add_argument("--by-study", action="store_true",
                   help="one verdict per study (DICOM StudyInstanceUID, else --study-map, else "
                   "per file), each view's result listed under it")
    s.add_argument("--study-agg", choices=("max", "mean"), default="max",
                   help="combine the views' calibrated probabilities by max (default) or mean")
    s.add_argument("--study-map", metavar="CSV",
                   help="CSV with 'path' and 'study' columns (a dataset manifest with a 'study' "
                   "column works) grouping non-DICOM images into studies")
    e = p.add_argument_group("engine (archive scale)")
    e.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default: this process) or ray (Ray Data, needs fracdet[ray]: PATHs may also be "
                   "CSV/Parquet manifests with a 'path' column or URIs pyarrow reads; --out is a folder of "
                   "Parquet shards; see docs/scale.md)")
    e.add_argument("--address", metavar="auto|ray://HOST:PORT",
                   help="Ray cluster to join (default: start a local Ray on this machine)")
    e.add_argument("--workers", type=int, metavar="N",
                   help="Ray actors, one model each (default: the cluster's CPUs less one, left for reading)")
    e.add_argument("--resume", action="store_true",
                   help="skip the inputs already in --out: the rows of an interrupted (or finished) .csv run, "
                   "kept in OUT.partial as they are written, or with --engine ray the Parquet shards")
    e.add_argument("--csv", action="store_true",
                   help="with --engine ray: also write OUT/predictions.csv (and OUT/studies.csv with --by-study)")
    r = p.add_argument_group("records")
    r.add_argument("--record", action="store_true",
                   help="record every successful prediction (file SHA-256, DICOM UIDs, model and its SHA-256, "
                   "probability, verdict, thresholds; never pixels) in the records database (see fracdet records)")
    r.add_argument("--db", metavar="URL", help="records database, a SQLAlchemy URL (default sqlite:///records.sqlite; "
                   "postgresql://... needs fracdet[serve])")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a: argparse.Namespace) -> int:
    if a.engine == "ray":
        return _cmd_predict_ray(a)
    if a.address or a.workers or a.csv:
        print("error: --address, --workers and --csv go with --engine ray", file=sys.stderr)
        return 2
    if a.resume and (not a.out or a.by_study):
        print("error: --resume continues a --out FILE.csv of image rows (not --by-study)", file=sys.stderr)
        return 2
    from fracdet.io.dicom import DicomOptions
    from fracdet.io.images import iter_image_files
    from fracdet.inference import group_by_study, load_model, read_study_map
    from fracdet.inference.writer import PredictionWriter
    from fracdet.progress import progress_over

    logging.getLogger("pydicom").setLevel(logging.ERROR)  # odd-value chatter; errors are rows
    study_map = read_study_map(a.study_map) if a.study_map else None
    if study_map is not None and not a.by_study:
        print("note: --study-map is used with --by-study only", file=sys.stderr)
    predictor = load_model(a.model, backend=a.backend, tta=a.tta, assess=not a.no_ood)
    files = list(iter_image_files(a.paths))
    options = DicomOptions(force=a.force, window=a.dicom_window)
    rows = []
    with PredictionWriter(a.out, resume=a.resume) as writer:
        files = [f for f in files if str(f) not in writer.finished]  # --resume: done before the interruption
        stream = predictor.predict_paths(files, batch_size=a.batch_size, dicom=options,
                                         heatmaps=a.heatmaps is not None, cam_method=a.cam_method)
        overlays = None
        if a.heatmaps is not None:
            from fracdet.cli.explain import OverlayWriter, heatmap_dir

            overlays = OverlayWriter(heatmap_dir(a.heatmaps, a.out), predictor.heatmap_method(a.cam_method), options)
        for pred in progress_over(stream, "predicting", total=len(files)):
            if overlays is not None:
                overlays.add(pred)  # writes PNG + .npy, then drops the map from memory
            if not a.by_study:
                writer.add(pred)
            rows.append(pred)
        studies = []
        if a.by_study:
            studies = group_by_study(rows, a.study_agg, study_map, predictor.decision)
            for study in studies:
                writer.add(study)
    if a.dicom_out:
        _write_dicom_results(rows, predictor, a.dicom_out)
    if a.record and rows:
        from fracdet.serve.records import record_predictions
        from fracdet.serve.settings import DEFAULT_DB, model_name_of

        ids = record_predictions(a.db or DEFAULT_DB, rows, predictor, model_name=model_name_of(a.model))
        log.info("recorded %d prediction(s) in %s", len(ids), a.db or DEFAULT_DB)
    if not a.quiet:
        if a.by_study:
            _print_studies(studies)
        else:
            _print_predictions(rows)
    bad = sum(not r.ok for r in rows)
    refused = sum(r.ok and not r.assessable for r in rows)
    corrected = sum(bool(r.warning) for r in rows)
    if not rows and writer.finished:
        log.info("all files were already in %s", a.out)
        return 0
    if not rows:
        print("error: no image files found in " + ", ".join(a.paths), file=sys.stderr)
        return 2
    if bad:
        n_files = len({r.path for r in rows})
        print(f"{bad} of {n_files} file(s) could not be read (see the error column)", file=sys.stderr)
    if refused or corrected:
        print(f"{refused} of {len(rows)} image(s) not assessable, {corrected} with a warning "
              "(see the reason and warning columns)", file=sys.stderr)
    return 1 if bad else 0


def _cmd_predict_ray(a: argparse.Namespace) -> int:
    """``--engine ray``: the batch on Ray Data (fracdet.batch), rows in Parquet shards under --out."""
    from fracdet.batch.engine import RayPlan, run_ray_predict

    if not a.out:
        print("error: --engine ray needs --out DIR (a folder for the Parquet shards)", file=sys.stderr)
        return 2
    if a.tta or a.heatmaps is not None or a.record or a.backend == "torch":
        print("error: --engine ray runs the onnxruntime path only (no --tta, --heatmaps, --record, --backend torch)",
              file=sys.stderr)
        return 2
    if a.workers is not None and a.workers < 1:
        print("error: --workers must be 1 or more", file=sys.stderr)
        return 2
    from pathlib import Path

    return run_ray_predict(RayPlan(
        sources=a.paths, out=Path(a.out), model=a.model, backend=a.backend, address=a.address, workers=a.workers,
        resume=a.resume, csv=a.csv, by_study=a.by_study, study_agg=a.study_agg, study_map=a.study_map,
        batch_size=a.batch_size, force=a.force, dicom_window=a.dicom_window, assess=not a.no_ood,
    ))


def _write_dicom_results(rows: list[Any], predictor: Any, out_dir: str) -> None:
    """SR + secondary captures (fracdet.dicomnode) for the predictions of DICOM inputs."""
    import pydicom

    from fracdet.dicomnode import write_results
    from fracdet.inference import group_by_study

    views = [r for r in rows if r.ok and r.meta.get("sop_uid")]  # not assessable ones too: their SR says why
    if not views:
        log.warning("--dicom-out: no DICOM input was predicted; nothing written")
        return
    datasets = {}
    for path in dict.fromkeys(str(r.path) for r in views):
        ds = pydicom.dcmread(path)
        datasets[str(ds.SOPInstanceUID)] = ds
    written = write_results(group_by_study(views, "max", decision=predictor.decision), datasets, out_dir, predictor)
    log.info("wrote %d DICOM result object(s) under %s", len(written), out_dir)


def _shown_path(r: Any) -> str:
    """The path as shown in tables (rich markup escaped), with the frame of multi-frame files."""
    from rich.markup import escape

    frames = r.meta.get("frames", 1) if r.meta else 1
    if frames and frames > 1 and "frame" in r.meta:
        return escape(f"{r.path} [frame {r.meta['frame']}]")
    return escape(str(r.path))


def _box_cell(boxes: Sequence[Sequence[float]] | None) -> str:
    """The best box in the table: ``x0,y0–x1,y1 (score)`` in original pixels, ``+k`` for the others."""
    if not boxes:
        return ""
    x0, y0, x1, y1, score = boxes[0][:5]
    more = f" +{len(boxes) - 1}" if len(boxes) > 1 else ""
    return f"{x0:.0f},{y0:.0f}–{x1:.0f},{y1:.0f} ({score:.2f}){more}"


def _print_predictions(rows: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    with_boxes = any(r.boxes is not None for r in rows)  # a model with a map or box head
    table = Table("path", "probability", "label", "verdict", "threshold", *(["boxes"] if with_boxes else []),
                  "error / reason")
    table.columns[0].overflow = "fold"
    if with_boxes:
        table.columns[5].no_wrap = True
    for r in rows:
        prob = f"{r.probability:.3f}" if r.probability is not None else ""
        style = "red" if not r.ok else ("bold" if r.label == "fractured" else "")
        boxes = [_box_cell(r.boxes)] if with_boxes else []
        table.add_row(_shown_path(r), prob, r.label or "", r.verdict or "", f"{r.threshold:.3f}", *boxes,
                      r.error or r.reason or r.warning or "", style=style)
    longest = len(max((_shown_path(r) for r in rows), key=len, default=""))
    table.columns[0].min_width = min(longest, 100)
    Console(width=max(120, longest + 60 + (36 if with_boxes else 0))).print(table)


def _print_studies(studies: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("study / view", "probability", "label", "verdict", "threshold", "views / error")
    table.columns[0].overflow = "fold"
    widest = 0
    for s in studies:
        prob = f"{s.probability:.3f}" if s.probability is not None else ""
        note = s.error or s.reason or f"{s.n_views} view(s), {s.aggregation}"
        style = "red" if not s.ok else ("bold" if s.label == "fractured" else "")
        table.add_row(f"study {escape(s.study)}", prob, s.label or "", s.verdict or "", f"{s.threshold:.3f}", note,
                      style=style)
        widest = max(widest, len(s.study) + 6)
        for v in s.views:
            shown = "  " + _shown_path(v)
            widest = max(widest, len(shown))
            vprob = f"{v.probability:.3f}" if v.probability is not None else ""
            table.add_row(shown, vprob, v.label or "", v.verdict or "", f"{v.threshold:.3f}",
                          v.error or v.reason or v.warning or "", style="red" if not v.ok else "dim")
    Console(width=max(120, widest + 60)).print(table)
