"""Results as DICOM objects in the radiographs' own study (highdicom):

* one **Comprehensive 3D SR** per study holding a TID 1500 measurement report: per image a
  measurement group (TID 1501) with the finding "fracture" (SNOMED CT 72704001), the calibrated
  probability, the verdict and the model's three operating points, referencing the source SOP
  Instance; one more group for the study verdict; the model name, version and artifact SHA-256
  as the algorithm identification. A view or study the model refused to judge gets the verdict
  "not assessable" with its reason (and no probability). The SR is UNVERIFIED and PARTIAL, and its series description
  and every group's algorithm parameters say *research use, not clinically validated*.
* one **Secondary Capture** (SCImage) per image: the radiograph with the verdict, probability and
  the research-use line burned in, so any viewer shows the result.

Boxes: the model gives none today (a classifier; ``fracdet.explain`` heatmaps say where the
network looked, they are not fracture boxes), so the SR has no SCOORD and the SC no boxes. A
future detector's boxes belong in PlanarROIMeasurementsAndQualitativeEvaluations groups with an
ImageRegion referencing the source image.

New series, new UIDs, the patient and study modules copied from the source; the sources are
never modified. Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fracdet import __version__
from fracdet.fsutil import atomic_path

DISCLAIMER = "fracdet research use only - not clinically validated - not for diagnosis"
SCHEME = "99FRACDET"
"""Private coding scheme for the concepts DICOM has no code for (operating points, verdicts)."""
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
GSPS_SERIES_NUMBER = 9903
MANUFACTURER = "fracdet"
VERDICT_CODES = {"fracture": ("fracture", "Fracture"), "doubt": ("doubt", "Doubt: a reader should look"),
                 "no fracture": ("no-fracture", "No fracture")}
VERDICT_COLOURS = {"fracture": (220, 40, 40), "doubt": (240, 170, 0), "no fracture": (40, 170, 80)}


def _codes() -> dict[str, Any]:
    from pydicom.sr.codedict import codes
    from highdicom.sr import CodedConcept

    return {
        "fracture": CodedConcept("72704001", "SCT", "Fracture"),
        "probability": CodedConcept("probability", SCHEME, "Calibrated probability of fracture"),
        "verdict": CodedConcept("verdict", SCHEME, "fracdet verdict"),
        "threshold": CodedConcept("threshold", SCHEME, "Main threshold (label)"),
        "doubt_threshold": CodedConcept("doubt-threshold", SCHEME, "Doubt threshold (high sensitivity)"),
        "fracture_threshold": CodedConcept("fracture-threshold", SCHEME, "Fracture threshold (high specificity)"),
        "unit": CodedConcept("1", "UCUM", "no units"),
        "procedure": CodedConcept("168537006", "SCT", "Plain radiography"),
        "finding_category": codes.SCT.MorphologicallyAbnormalStructure,
    }


def algorithm_id(predictor: Any) -> Any:
    """The model as the SR's algorithm identification: name, version, artifact SHA-256."""
    from highdicom.sr import AlgorithmIdentification

    art = predictor.artifact
    return AlgorithmIdentification(
        name=f"fracdet {art.architecture}", version=str(art.version or __version__)[:64],
        manufacturer=MANUFACTURER,
        parameters=[f"artifact SHA-256={art.sha256 or 'unknown (in-memory model)'}",
                    _calibration_text(art), "use=research only, not clinically validated"],
    )


def _calibration_text(art: Any) -> str:
    """The calibration map in ASCII within a DICOM LO (64 characters), e.g. ``calibration=beta a=1.13 b=0.445 c=-0.372``."""
    spec = art.calibration_in_use()
    params = spec["params"]
    if spec["method"] == "isotonic":
        return f"calibration=isotonic, {len(params['x'])} breakpoints"
    return (f"calibration={spec['method']} " + " ".join(f"{k}={v:.4g}" for k, v in params.items()))[:64]


def _group(tracking: str, uid: str, codes: dict[str, Any], predictor: Any, probability: float | None, verdict: str,
           algo: Any, source: Any | None, reason: str | None = None) -> Any:
    from highdicom.sr import (CodedConcept, Measurement, MeasurementsAndQualitativeEvaluations,
                              QualitativeEvaluation, SourceImageForMeasurementGroup, TrackingIdentifier)

    def measure(key: str, value: float) -> Any:
        return Measurement(name=codes[key], value=float(value), unit=codes["unit"])

    code, meaning = VERDICT_CODES.get(verdict, (verdict.replace(" ", "-"), verdict))
    if probability is None:  # not assessable: no probability, the reason as the verdict's meaning
        code, meaning = "not-assessable", f"Not assessable: {reason or 'unknown reason'}"[:64]
    measurements = [measure("threshold", predictor.threshold), measure("doubt_threshold", predictor.doubt_threshold),
                    measure("fracture_threshold", predictor.fracture_threshold)]
    if probability is not None:
        measurements.insert(0, measure("probability", probability))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=tracking[:64]),
        finding_type=codes["fracture"], finding_category=codes["finding_category"], algorithm_id=algo,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)] if source is not None else None,
        measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(codes["verdict"], CodedConcept(code, SCHEME, meaning))],
    )


def build_sr(study: Any, datasets: Mapping[str, Any], predictor: Any) -> Any:
    """The study's Comprehensive 3D SR (TID 1500); ``datasets``: source datasets by SOPInstanceUID."""
    from highdicom import UID
    from highdicom.sr import (Comprehensive3DSR, DeviceObserverIdentifyingAttributes, MeasurementReport,
                              ObservationContext, ObserverContext)
    from pydicom.sr.codedict import codes as dcodes

    codes = _codes()
    algo = algorithm_id(predictor)
    groups = []
    used = []
    for i, view in enumerate(study.views, 1):
        ds = datasets.get(str(view.meta.get("sop_uid", "")))
        if ds is None or not view.ok:
            continue
        frame = view.meta.get("frame")
        label = f"image {i}" + (f" frame {frame}" if frame not in (None, 0) else "")
        groups.append(_group(label, UID(), codes, predictor, view.probability, view.verdict or "", algo, ds,
                             view.reason))
        used.append(ds)
    if not used:
        raise ValueError(f"study {study.study}: no readable source image to report on")
    if study.ok:
        groups.append(_group(f"study verdict ({study.aggregation} of {study.n_views} views)", UID(), codes,
                             predictor, study.probability, study.verdict or "", algo, None, study.reason))
    observer = ObserverContext(
        observer_type=dcodes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=UID(), name="fracdet", manufacturer_name=MANUFACTURER,
            model_name=f"{predictor.artifact.architecture} (fracdet {__version__})"))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=None, observer_device_context=observer),
        procedure_reported=codes["procedure"], imaging_measurements=groups)
    first = used[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's remarks on the source's names
        sr = Comprehensive3DSR(
            evidence=used, content=report, series_instance_uid=UID(), series_number=SR_SERIES_NUMBER,
            sop_instance_uid=UID(), instance_number=1, manufacturer=MANUFACTURER,
            is_complete=False, is_final=False, is_verified=False, series_description=_desc("fracture report"),
        )
    _copy_study(sr, first)
    return sr


def _desc(what: str) -> str:
    return f"fracdet {what} (research use, unverified)"[:64]


def _copy_study(new: Any, source: Any) -> None:
    """highdicom copies the patient/study modules; keep the few extra identifiers it leaves out."""
    for kw in ("AccessionNumber", "StudyID", "StudyDate", "StudyTime", "StudyDescription"):
        if kw in source and kw not in new:
            setattr(new, kw, source.get(kw))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def render_sc_pixels(pixels: np.ndarray, prediction: Any, max_side: int = 1024) -> np.ndarray:
    """The radiograph (H×W in [0, 1], bone bright) as RGB uint8, shrunk to ``max_side``, with a
    band above (verdict, probability, operating points) and one below (the research-use line)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.clip(np.asarray(pixels, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    w, h = img.size
    size = max(12, w // 32)
    band = size * 2 + 12
    canvas = Image.new("RGB", (w, h + 2 * band), (0, 0, 0))
    canvas.paste(img.convert("RGB"), (0, band))
    draw = ImageDraw.Draw(canvas)
    verdict = prediction.verdict or "not assessable"
    colour = VERDICT_COLOURS.get(verdict, (150, 150, 150))
    draw.rectangle([0, 0, w, band - 1], fill=colour)
    prob = "" if prediction.probability is None else f"  p={prediction.probability:.2f}"
    draw.text((6, 4), f"{verdict.upper()}{prob}", fill=(255, 255, 255), font=_font(size))
    second = (f"threshold {prediction.threshold:.2f}" if prediction.probability is not None
              else f"not judged: {getattr(prediction, 'reason', None) or 'unknown reason'}")
    if getattr(prediction, "warning", None):
        second += f"  WARNING: {prediction.warning}"
    draw.text((6, 6 + size), second, fill=(255, 255, 255), font=_font(size * 2 // 3))
    draw.text((6, h + band + 4), DISCLAIMER, fill=(255, 255, 0), font=_font(max(10, size * 2 // 3)))
    draw.text((6, h + band + 8 + size * 2 // 3), "UNVERIFIED - no fracture boxes (a classifier)",
              fill=(255, 255, 0), font=_font(max(10, size * 2 // 3)))
    return np.asarray(canvas)


def build_sc(prediction: Any, source: Any, pixels: np.ndarray, series_uid: str, number: int) -> Any:
    """One image's Secondary Capture: ``pixels`` (the radiograph as read) with the verdict burned in."""
    from highdicom import UID
    from highdicom.sc import SCImage

    rgb = render_sc_pixels(pixels, prediction)
    given = [str(v) for v in (source.get("PatientOrientation") or [])]
    known = len(given) == 2 and all(v and set(v) <= set("APLRHF") for v in given)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's remarks on the source's names
        sc = SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", patient_orientation=tuple(given) if known else ("L", "F"),
            series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
            sop_instance_uid=UID(), instance_number=number, manufacturer=MANUFACTURER,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    if not known:
        sc.PatientOrientation = None  # type 2: unknown, left empty rather than guessed
    sc.SeriesDescription = _desc("verdict overlay")
    sc.ImageComments = DISCLAIMER
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = source.get("BodyPartExamined", None) or None
    if sc.BodyPartExamined is None:
        del sc.BodyPartExamined
    ref = _ref_item(source)
    sc.SourceImageSequence = [ref]
    _copy_study(sc, source)
    return sc


def build_gsps(view: Any, source: Any, predictor: Any, series_uid: str, number: int) -> Any:
    """A Grayscale Softcopy Presentation State over one original: a text annotation with the
    verdict, probability and the research-use line (no boxes: the model gives none). One per image,
    as a presentation state's images must share their size."""
    from highdicom import UID
    from highdicom.pr import GraphicAnnotation, GraphicLayer, GrayscaleSoftcopyPresentationState, TextObject

    layer = GraphicLayer(layer_name="FRACDET", order=1, description="fracdet verdict (research use, unverified)")
    detail = f"p={view.probability:.2f}" if view.probability is not None else f"({view.reason or ''})"
    text = f"fracdet: {(view.verdict or '').upper()} {detail} - research use, unverified"
    annotation = GraphicAnnotation(
        referenced_images=[source], graphic_layer=layer,
        text_objects=[TextObject(text_value=text, units="DISPLAY", bounding_box=(0.01, 0.01, 0.99, 0.06))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pr = GrayscaleSoftcopyPresentationState(
            referenced_images=[source], series_instance_uid=series_uid, series_number=GSPS_SERIES_NUMBER,
            sop_instance_uid=UID(), instance_number=number, manufacturer=MANUFACTURER,
            manufacturer_model_name=str(predictor.artifact.architecture)[:64], software_versions=__version__,
            device_serial_number=(predictor.artifact.sha256 or "unknown")[:64], content_label="FRACDET",
            content_description="fracdet verdict - research use, unverified", graphic_annotations=[annotation],
            graphic_layers=[layer])
    pr.SeriesDescription = _desc("verdict annotation")
    _copy_study(pr, source)
    return pr


def _ref_item(source: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _save(ds: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def write_results(study_predictions: Iterable[Any], source_datasets: Mapping[str, Any] | Sequence[Any],
                  out_dir: str | Path, predictor: Any,
                  pixels: Mapping[tuple[str, int], np.ndarray] | None = None, gsps: bool = False) -> list[Path]:
    """Write each study's SR and one Secondary Capture per readable image under
    ``out_dir/<StudyInstanceUID>/`` (``SR-<uid>.dcm``, ``SC-<uid>.dcm``); return the paths.

    ``study_predictions``: from :func:`fracdet.inference.group_by_study` (their views carry
    ``meta["sop_uid"]``); ``source_datasets``: the source pydicom datasets (a list, or a mapping by
    SOPInstanceUID); ``pixels``: the radiographs as read, by (SOPInstanceUID, frame) — read again
    from the datasets with fracdet's DICOM reader when missing."""
    if not isinstance(source_datasets, Mapping):
        source_datasets = {str(ds.SOPInstanceUID): ds for ds in source_datasets}
    from highdicom import UID

    out = Path(out_dir)
    written: list[Path] = []
    for study in study_predictions:
        folder = out / _safe(str(study.study))
        sr = build_sr(study, source_datasets, predictor)
        sc_series, pr_series = UID(), UID()
        objects: list[tuple[str, Any]] = []  # every object built before the first is written
        for view in study.views:
            ds = source_datasets.get(str(view.meta.get("sop_uid", "")))
            if ds is None or not view.ok:
                continue
            frame = int(view.meta.get("frame") or 0)
            arr = (pixels or {}).get((str(ds.SOPInstanceUID), frame))
            if arr is None:
                arr = _read_pixels(ds, frame)
            n = sum(kind == "SC" for kind, _ in objects) + 1
            objects.append(("SC", build_sc(view, ds, arr, sc_series, n)))
            if gsps:
                objects.append(("PR", build_gsps(view, ds, predictor, pr_series, n)))
        objects.append(("SR", sr))  # the SR last: the last object of a study to appear
        done: list[Path] = []
        try:
            for kind, ds in objects:
                done.append(_save(ds, folder / f"{kind}-{ds.SOPInstanceUID}.dcm"))
        except BaseException:  # never a study's results in part
            for p in done:
                p.unlink(missing_ok=True)
            raise
        written.extend(done)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)[:128] or "study"


def _read_pixels(ds: Any, frame: int) -> np.ndarray:
    import tempfile

    from fracdet.io.dicom import read_frames

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.dcm"
        ds.save_as(path, enforce_file_format=False)
        return np.array(read_frames(path)[frame].pixels)
