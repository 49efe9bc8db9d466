"""``fracdet dicom-node`` against a real PACS: Debian's Orthanc, started here on loopback ports
with a temporary configuration. Orthanc receives CR radiographs over its REST API, C-STOREs the
study to the node, and the node's SR and secondary captures come back into Orthanc's study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from optional import missing_optional

try:
    import highdicom  # noqa: F401
    import pydicom
    import pynetdicom  # noqa: F401
except ImportError:  # pragma: no cover - a light install
    pydicom = None

from dicomnode_helpers import SAMPLES, Orthanc, Receiver, c_store, cr_from_jpeg, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor():
    if pydicom is None:
        missing_optional("pynetdicom/highdicom not installed (pip install 'fracdet[dicomnode]')")
    from fracdet.inference import load_model

    return load_model()


@pytest.fixture(scope="module")
def node_port():
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, node_port, predictor):
    if shutil.which("Orthanc") is None:
        missing_optional("Orthanc not installed (apt-get install orthanc)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), node_port)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, orthanc, node_port, predictor):
    from fracdet.dicomnode.forward import Forwarder
    from fracdet.dicomnode.scp import DicomNode

    out = tmp_path_factory.mktemp("node-out")
    fwd = Forwarder(f"{orthanc.ae}@127.0.0.1:{orthanc.dicom_port}", out / ".outbox", retry_base_s=0.2,
                    retry_max_s=1.0)
    n = DicomNode(predictor, out, port=node_port, forwarder=fwd, quiet_s=0.2, gsps=True)
    n.start(block=False)
    yield n
    n.stop()


def _settle(node, timeout=60.0):
    assert node.collector.wait_idle(timeout)
    end = time.monotonic() + timeout
    while node.forwarder is not None and node.forwarder.pending() and time.monotonic() < end:
        time.sleep(0.1)


def _wait_instances(orthanc, study_id, n, timeout=60.0):
    end = time.monotonic() + timeout
    while True:
        found = orthanc.study_instances(study_id)
        if len(found) >= n or time.monotonic() > end:
            return found
        time.sleep(0.2)


def _read(orthanc, orthanc_id):
    from io import BytesIO

    return pydicom.dcmread(BytesIO(orthanc.instance_file(orthanc_id)))


def _walk(items):
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def _meaning(item):
    return item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""


def _upload_study(orthanc, files):
    ids = [orthanc.upload(f) for f in files]
    assert len({i["ParentStudy"] for i in ids}) == 1
    return ids[0]["ParentStudy"], ids


def test_study_of_several_views_round_trip(tmp_path, orthanc, node, predictor):
    """Three CR views of one study (FracAtlas films made DICOM) go PACS → node → PACS: one SR
    referencing each view with its probability, verdict and operating points, three captures and
    a presentation state (--gsps) over each original."""
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    jpegs = [SAMPLES / "fractured" / "IMG0000352.jpg", SAMPLES / "fractured" / "IMG0000092.jpg",
             SAMPLES / "not_fractured" / "IMG0000048.jpg"]
    series = generate_uid()
    files = [cr_from_jpeg(j, tmp_path / f"view{i}.dcm", study_uid, view=v, series_uid=series, number=i + 1)
             for i, (j, v) in enumerate(zip(jpegs, ["AP", "LL", "PA"]))]
    sent_bytes = {pydicom.dcmread(f).SOPInstanceUID: f.read_bytes() for f in files}
    study_id, ids = _upload_study(orthanc, files)

    orthanc.store_to("fracdet", [study_id])
    _settle(node)
    found = _wait_instances(orthanc, study_id, 3 + 3 + 3 + 1)
    datasets = [_read(orthanc, i["ID"]) for i in found]
    by_modality = {}
    for ds in datasets:
        by_modality.setdefault(str(ds.Modality), []).append(ds)
    assert len(by_modality["CR"]) == 3
    assert len(by_modality["SR"]) == 1 and len(by_modality["OT"]) == 3 and len(by_modality["PR"]) == 3
    assert {pr.GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
            for pr in by_modality["PR"]} == set(sent_bytes)  # one presentation state per original

    # originals unchanged: Orthanc still holds the very bytes uploaded; no file of ours touched them
    for i in ids:
        ds = _read(orthanc, i["ID"])
        assert orthanc.instance_file(i["ID"]) == sent_bytes[ds.SOPInstanceUID]

    expected = {}
    for f in files:
        pred = predictor.predict(list(__import__("fracdet.io.dicom", fromlist=["read_frames"]).read_frames(f))[0])
        expected[pydicom.dcmread(f).SOPInstanceUID] = pred

    sr = by_modality["SR"][0]
    originals = {d.SOPInstanceUID: d for d in by_modality["CR"]}
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID != series
    assert sr.PatientName == "Test^Patient" and sr.PatientID == "FD0001" and sr.AccessionNumber == "ACC1"
    assert sr.VerificationFlag == "UNVERIFIED" and "research use" in sr.SeriesDescription
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == set(originals)
    groups = [it for it in _walk(sr.ContentSequence) if _meaning(it) == "Measurement Group"]
    assert len(groups) == 4  # three views and the study verdict
    texts = [it.TextValue for it in _walk(sr.ContentSequence) if it.ValueType == "TEXT"]
    assert f"artifact SHA-256={predictor.artifact.sha256}" in texts
    assert any("research only" in t for t in texts)
    study_probs = []
    for group in groups:
        items = list(_walk(group.ContentSequence))
        values = {_meaning(it): float(it.MeasuredValueSequence[0].NumericValue) for it in items
                  if it.ValueType == "NUM"}
        codes = {_meaning(it): it.ConceptCodeSequence[0].CodeMeaning for it in items if it.ValueType == "CODE"}
        assert codes["Finding"] == "Fracture"
        assert values["Main threshold (label)"] == pytest.approx(predictor.threshold, abs=1e-6)
        assert values["Doubt threshold (high sensitivity)"] == pytest.approx(predictor.doubt_threshold, abs=1e-6)
        assert values["Fracture threshold (high specificity)"] == pytest.approx(predictor.fracture_threshold,
                                                                                abs=1e-6)
        images = [it for it in items if it.ValueType == "IMAGE"]
        prob = values["Calibrated probability of fracture"]
        if images:
            uid = images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            assert prob == pytest.approx(expected[uid].probability, abs=1e-5)
            assert codes["fracdet verdict"].lower().startswith(expected[uid].verdict.split()[0])
            study_probs.append(prob)
        else:
            assert prob == pytest.approx(max(study_probs), abs=1e-6)

    # highdicom reads it back as a TID 1500 report
    from highdicom.sr import Comprehensive3DSR

    report = Comprehensive3DSR.from_dataset(sr).content
    hd_groups = report.get_image_measurement_groups()
    assert len(hd_groups) == 4
    refs = set()
    for g in hd_groups:
        assert g.finding_type.value == "72704001"  # SNOMED CT: Fracture
        measured = {m.name.meaning: m.value for m in g.get_measurements()}
        if g.source_images:
            uid = g.source_images[0].referenced_sop_instance_uid
            refs.add(uid)
            assert measured["Calibrated probability of fracture"] == pytest.approx(expected[uid].probability, abs=1e-5)
    assert refs == set(originals)

    for sc in by_modality["OT"]:
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert sc.StudyInstanceUID == study_uid and sc.SeriesInstanceUID not in (series, sr.SeriesInstanceUID)
        assert sc.PatientName == "Test^Patient" and sc.BurnedInAnnotation == "YES"
        assert "research use only" in sc.ImageComments
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in originals
        assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3
    if os.environ.get("FRACDET_TEST_ARTIFACTS"):
        from PIL import Image

        art = Path(os.environ["FRACDET_TEST_ARTIFACTS"])
        art.mkdir(parents=True, exist_ok=True)
        Image.fromarray(by_modality["OT"][0].pixel_array).save(art / "dicomnode-secondary-capture.png")


def test_jpeg2000_cr_from_pydicom_data(orthanc, node):
    """pydicom-data's JPEG 2000 CR (1955×1841, 15-bit MONOCHROME1) through the PACS and back."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("RG1_J2KI.dcm"))
    before = path.read_bytes()
    study_id, _ = _upload_study(orthanc, [path])
    orthanc.store_to("fracdet", [study_id])
    _settle(node)
    found = _wait_instances(orthanc, study_id, 4)
    modalities = sorted(str(_read(orthanc, i["ID"]).Modality) for i in found)
    assert modalities == ["CR", "OT", "PR", "SR"]
    assert path.read_bytes() == before


def test_mr_is_refused_and_the_node_keeps_serving(orthanc, node):
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("MR_small.dcm"))
    study_uid = pydicom.dcmread(path).StudyInstanceUID
    study_id, _ = _upload_study(orthanc, [path])
    with pytest.raises(urllib.error.HTTPError):  # Orthanc reports the failed C-STORE
        orthanc.store_to("fracdet", [study_id])
    _settle(node)
    assert not (node.out_dir / study_uid).exists()
    assert len(orthanc.study_instances(study_id)) == 1
    echo = orthanc.request("POST", "/modalities/fracdet/echo", b"{}")
    assert echo in ({}, b"", b"{}") or isinstance(echo, dict)


def test_aborted_association_leaves_nothing_half_written(tmp_path, node, node_port):
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    files = [cr_from_jpeg(SAMPLES / "fractured" / j, tmp_path / f"{i}.dcm", study_uid, number=i)
             for i, j in enumerate(["IMG0002303.jpg", "IMG0003342.jpg"])]
    assert c_store(files, node_port, abort_after=1) == [0]
    time.sleep(0.5)
    assert node.collector.wait_idle(30)
    assert not (node.out_dir / study_uid).exists()
    assert not [p for p in (node.out_dir / ".incoming").rglob("*") if p.is_file()]
    # the node keeps serving: the same study, sent whole, is judged
    assert c_store(files, node_port) == [0, 0]
    _settle(node)
    written = sorted(p.name[:3] for p in (node.out_dir / study_uid).iterdir())
    assert written == ["PR-", "PR-", "SC-", "SC-", "SR-"]
    assert not [p for p in (node.out_dir / study_uid).iterdir() if p.name.startswith(".")]  # no temporaries


def test_forward_destination_down_keeps_and_resends(tmp_path, predictor):
    from pydicom.uid import generate_uid

    from fracdet.dicomnode.forward import Forwarder
    from fracdet.dicomnode.scp import DicomNode

    port, dest = free_port(), free_port()
    out = tmp_path / "out"
    fwd = Forwarder(f"LATE@127.0.0.1:{dest}", out / ".outbox", retry_base_s=0.2, retry_max_s=0.5, timeout_s=5)
    node = DicomNode(predictor, out, port=port, forwarder=fwd, quiet_s=0.1)
    node.start(block=False)
    receiver = None
    try:
        study_uid = generate_uid()
        f = cr_from_jpeg(SAMPLES / "not_fractured" / "IMG0000080.jpg", tmp_path / "a.dcm", study_uid)
        assert c_store([f], port) == [0]
        assert node.collector.wait_idle(30)
        time.sleep(1.0)  # a few failed attempts
        assert fwd.failures >= 1
        kept = fwd.pending()
        assert len(kept) == 2  # SR + SC wait in the outbox
        receiver = Receiver(dest)
        end = time.monotonic() + 20
        while fwd.pending() and time.monotonic() < end:
            time.sleep(0.1)
        assert not fwd.pending()
        assert sorted(str(ds.Modality) for ds in receiver.received) == ["OT", "SR"]
        assert all(ds.StudyInstanceUID == study_uid for ds in receiver.received)
        assert len(list((out / study_uid).glob("*.dcm"))) == 2  # the results stay in --out
    finally:
        node.stop()
        if receiver is not None:
            receiver.stop()


def test_cli_dicom_node_subprocess(tmp_path):
    """``fracdet dicom-node`` as a command: listens, judges a study, logs no patient name, stops on SIGTERM."""
    if pydicom is None:
        missing_optional("pynetdicom/highdicom not installed (pip install 'fracdet[dicomnode]')")
    from pydicom.uid import generate_uid

    port = free_port()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fracdet", "dicom-node", "--port", str(port), "--ae-title",
                             "FRACDET", "--out", str(out), "--quiet", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        from pynetdicom import AE

        end = time.monotonic() + 60
        while True:
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="FRACDET")
            if assoc.is_established:
                assoc.release()
                break
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.3)
        study_uid = generate_uid()
        f = cr_from_jpeg(SAMPLES / "fractured" / "IMG0000352.jpg", tmp_path / "a.dcm", study_uid,
                         patient="Secret^Name")
        assert c_store([f], port) == [0]
        end = time.monotonic() + 60
        while not list(out.glob(f"{study_uid}/SR-*.dcm")) and time.monotonic() < end:
            time.sleep(0.2)
        assert list(out.glob(f"{study_uid}/SR-*.dcm"))
        assert len(list(out.glob(f"{study_uid}/SC-*.dcm"))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        logs = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, logs
    assert "Secret" not in logs and "FD0001" not in logs
    assert f"study {study_uid}" in logs and "association 1 from TESTSCU" in logs
    json.dumps(logs)  # plain text, one line per event
