"""The node: a DICOM Storage SCP (pynetdicom) that judges the radiographs a PACS sends it.

What it accepts (presentation contexts):

* SOP classes: Computed Radiography Image Storage, Digital X-Ray Image Storage — For
  Presentation and For Processing, Secondary Capture Image Storage — the single-frame
  radiograph classes fracdet's model was made for. Every other SOP class (CT, MR, US, SR,
  enhanced and multi-frame classes, documents, ...) is **refused at association negotiation**:
  the sender gets "abstract syntax not supported" for it and nothing is stored. Refusing is
  honest where a "not assessable" report would clutter the study with an object per refusal.
* Transfer syntaxes: those fracdet decodes (pydicom plus the pylibjpeg decoders of the
  ``dicom`` extra) — implicit/explicit VR little endian, explicit big endian, deflated, JPEG
  baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE.
* Inside an accepted class, an image whose Modality is not a radiograph (a Secondary Capture of
  a CT, say; see :data:`fracdet.io.dicom.RADIOGRAPH_MODALITIES`) is refused with status 0xA900
  and a comment. fracdet's own results sent back to it (Manufacturer "fracdet") are answered
  Success and ignored, so re-sending a whole study never feeds the node its own captures; for
  that one reason Comprehensive 3D SR and Grayscale Softcopy Presentation State are also
  negotiated — any SR or presentation state not made by fracdet is refused (0xA900).

Received images are spooled under ``OUT/.incoming`` (atomically), collected per study
(:mod:`fracdet.dicomnode.studies`), predicted on the one inference path, and the results written
to ``OUT/<StudyInstanceUID>/`` (:mod:`fracdet.dicomnode.results`) and forwarded
(:mod:`fracdet.dicomnode.forward`). Logs one line per association and per study, with UIDs and
AE titles only — never a patient's name or ID.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

from fracdet.dicomnode.studies import StudyCollector
from fracdet.fsutil import atomic_path

log = logging.getLogger("fracdet.dicomnode")

RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8 bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
OWN_RESULT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
                          "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State Storage"}
"""Negotiated only so that a study sent back with fracdet's own SR in it is not refused whole."""
STATUS_NOT_RADIOGRAPH = 0xA900  # "Data Set does not match SOP Class"
STATUS_CANNOT_UNDERSTAND = 0xC000


def process_study(predictor: Any, study_uid: str, files: list[Path], out_dir: Path,
                  gsps: bool = False) -> list[Path]:
    """Predict a study's received files and write its results; returns the written paths."""
    import pydicom

    from fracdet.dicomnode.results import write_results
    from fracdet.errors import FracdetError
    from fracdet.inference import group_by_study
    from fracdet.io.dicom import DicomOptions, read_frames

    preds, datasets, pixels = [], {}, {}
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            for xray in read_frames(path, DicomOptions()):
                pred = predictor.predict(xray)
                preds.append(pred)
                pixels[(str(ds.SOPInstanceUID), int(pred.meta.get("frame") or 0))] = xray.pixels
            datasets[str(ds.SOPInstanceUID)] = ds
        except (FracdetError, OSError, ValueError) as exc:
            log.warning("study %s: %s skipped: %s", study_uid, path.name, exc)
    if not preds:
        log.warning("study %s: no readable image among %d; no result", study_uid, len(files))
        return []
    studies = group_by_study(preds, "max", decision=predictor.decision)
    written = write_results(studies, datasets, out_dir, predictor, pixels=pixels, gsps=gsps)
    for s in studies:
        prob = "n/a" if s.probability is None else f"{s.probability:.3f}"
        log.info("study %s: %d image(s), verdict %s (p=%s, max of views); wrote SR + %d SC%s in %s",
                 s.study, s.n_views, s.verdict, prob, sum(p.name.startswith("SC-") for p in written),
                 " + GSPS" if gsps else "", out_dir / written[0].parent.name)
    return written


class DicomNode:
    """A Storage SCP on ``host:port`` answering as ``ae_title``; results in ``out_dir``,
    forwarded by ``forwarder`` (a :class:`~fracdet.dicomnode.forward.Forwarder`) when given."""

    def __init__(self, predictor: Any, out_dir: str | Path, ae_title: str = "FRACDET", port: int = 11112,
                 host: str = "127.0.0.1", forwarder: Any = None, quiet_s: float = 1.0, gsps: bool = False) -> None:
        self.predictor = predictor
        self.out_dir = Path(out_dir)
        self.incoming = self.out_dir / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.forwarder = forwarder
        self.gsps = gsps
        self.collector = StudyCollector(self._process, quiet_s=quiet_s)
        self._server: Any = None
        self._ids = itertools.count(1)
        self._assocs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.results: list[Path] = []

    # -- processing ------------------------------------------------------------------------
    def _process(self, study_uid: str, files: list[Path]) -> None:
        """Judge one study; its received files are deleted once its results are written, or kept
        in ``OUT/.failed/<study>/`` when that failed (to look at, or to send again)."""
        failed = True
        try:
            written = process_study(self.predictor, study_uid, files, self.out_dir, gsps=self.gsps)
            failed = False
            self.results.extend(written)
            if written and self.forwarder is not None:
                self.forwarder.submit(written)
        finally:
            keep = self.out_dir / ".failed" / _safe(study_uid)
            for p in files:
                if failed and p.exists():
                    keep.mkdir(parents=True, exist_ok=True)
                    p.replace(keep / p.name)
                p.unlink(missing_ok=True)
                try:
                    p.parent.rmdir()
                except OSError:
                    pass

    # -- association bookkeeping -----------------------------------------------------------
    def _info(self, event: Any) -> dict[str, Any]:
        key = id(event.assoc)
        with self._lock:
            if key not in self._assocs:
                req = event.assoc.requestor
                self._assocs[key] = {"n": next(self._ids), "ae": str(req.ae_title).strip(),
                                     "addr": f"{req.address}:{req.port}", "stored": 0, "refused": 0,
                                     "ignored": 0, "start": time.monotonic()}
            return self._assocs[key]

    def _end(self, event: Any, how: str) -> None:
        key = id(event.assoc)
        with self._lock:
            info = self._assocs.pop(key, None)
        if info is None:  # already ended (the close after a release or an abort)
            return
        dropped = 0
        if how == "released":
            self.collector.release(info["n"])  # the node's own number: an object id may be reused
        else:
            dropped = self.collector.discard(info["n"])
        log.info("association %s from %s (%s): %d stored, %d refused, %d ignored, %s after %.1f s%s",
                 info["n"], info["ae"], info["addr"], info["stored"], info["refused"], info["ignored"], how,
                 time.monotonic() - info["start"],
                 f"; {dropped} image(s) of the unfinished transfer discarded" if dropped else "")

    # -- event handlers --------------------------------------------------------------------
    def _on_store(self, event: Any) -> Any:
        from fracdet.io.dicom import RADIOGRAPH_MODALITIES

        info = self._info(event)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:
            info["refused"] += 1
            return _status(STATUS_CANNOT_UNDERSTAND, f"cannot decode the data set ({type(exc).__name__})")
        if str(ds.get("Manufacturer", "")) == "fracdet":
            info["ignored"] += 1
            return 0x0000
        modality = str(ds.get("Modality", "") or "").upper()
        if modality not in RADIOGRAPH_MODALITIES:
            info["refused"] += 1
            return _status(STATUS_NOT_RADIOGRAPH, f"modality {modality} is not a radiograph; fracdet judges "
                                                  "X-ray radiographs only")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        if not study_uid or not sop_uid:
            info["refused"] += 1
            return _status(STATUS_CANNOT_UNDERSTAND, "no StudyInstanceUID or SOPInstanceUID")
        folder = self.incoming / f"assoc-{info['n']}"
        path = folder / f"{_safe(sop_uid)}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        self.collector.add(info["n"], study_uid, path)
        info["stored"] += 1
        return 0x0000

    def _on_close(self, event: Any) -> None:
        """The connection closed: pynetdicom may tell this before the release or abort, from another
        thread, so decide a moment later from the association's state (a no-op once either was told)."""
        def settle() -> None:
            self._end(event, "released" if event.assoc.is_released else "closed without release")

        timer = threading.Timer(0.5, settle)
        timer.daemon = True
        timer.start()

    def _on_echo(self, event: Any) -> int:
        return 0x0000

    # -- lifecycle -------------------------------------------------------------------------
    def application_entity(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        for uid in RADIOGRAPH_SOP_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        for uid in OWN_RESULT_SOP_CLASSES:
            ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])  # C-ECHO
        ae.maximum_associations = 16
        return ae

    def start(self, block: bool = False) -> Any:
        """Listen; ``block=False`` returns the server (a thread), ``True`` serves until interrupted."""
        from pynetdicom import evt

        handlers = [(evt.EVT_ACCEPTED, self._info), (evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_RELEASED, lambda e: self._end(e, "released")),
                    (evt.EVT_ABORTED, lambda e: self._end(e, "aborted")),
                    (evt.EVT_CONN_CLOSE, self._on_close)]
        ae = self.application_entity()
        log.info("dicom-node %s listening on %s:%d; results in %s%s", self.ae_title, self.host, self.port,
                 self.out_dir, f", forwarded to {self.forwarder.destination}" if self.forwarder else "")
        self._server = ae.start_server((self.host, self.port), block=block, evt_handlers=handlers)
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.collector.stop()
        if self.forwarder is not None:
            self.forwarder.stop()


def _status(code: int, comment: str) -> Any:
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)[:128] or "instance"
