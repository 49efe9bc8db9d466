"""The DICOM node's results without a network: ``write_results`` on pydicom-data's CR and a CR
made from a FracAtlas film (TID 1500 SR + secondary captures), and the node's small parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from optional import missing_optional

try:
    import highdicom  # noqa: F401
    import pydicom
except ImportError:  # pragma: no cover - a light install
    pydicom = None

from dicomnode_helpers import SAMPLES, cr_from_jpeg


@pytest.fixture(scope="module")
def predictor():
    if pydicom is None:
        missing_optional("highdicom not installed (pip install 'fracdet[dicomnode]')")
    from fracdet.inference import load_model

    return load_model()


def test_write_results_sr_and_captures(tmp_path, predictor):
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from fracdet.dicomnode import write_results
    from fracdet.inference import group_by_study
    from fracdet.io.dicom import read_frames

    made = cr_from_jpeg(SAMPLES / "fractured" / "IMG0000352.jpg", tmp_path / "made.dcm", generate_uid())
    files = [Path(get_testdata_file("RG1_UNCR.dcm")), made]
    before = [f.read_bytes() for f in files]
    preds = [predictor.predict(x) for f in files for x in read_frames(f)]
    studies = group_by_study(preds, "max", decision=predictor.decision)
    assert len(studies) == 2
    datasets = [pydicom.dcmread(f) for f in files]
    written = write_results(studies, datasets, tmp_path / "out", predictor, gsps=True)  # pixels read again
    assert [f.read_bytes() for f in files] == before
    assert sorted(p.name[:3] for p in written) == ["PR-", "PR-", "SC-", "SC-", "SR-", "SR-"]
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temporaries left
    for study, ds in zip(studies, datasets):
        folder = tmp_path / "out" / ds.StudyInstanceUID
        sr = pydicom.dcmread(next(folder.glob("SR-*.dcm")))
        sc = pydicom.dcmread(next(folder.glob("SC-*.dcm")))
        for new in (sr, sc):
            assert new.StudyInstanceUID == ds.StudyInstanceUID and new.SeriesInstanceUID != ds.SeriesInstanceUID
            assert new.SOPInstanceUID != ds.SOPInstanceUID
            assert new.PatientID == ds.PatientID and new.PatientName == ds.PatientName
        assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
        nums = [it for it in _walk(sr.ContentSequence) if it.ValueType == "NUM"
                and it.ConceptNameCodeSequence[0].CodeMeaning == "Calibrated probability of fracture"]
        if study.assessable:
            assert [float(n.MeasuredValueSequence[0].NumericValue) for n in nums] == pytest.approx(
                [study.views[0].probability, study.probability], abs=1e-6)
        else:  # pydicom-data's chest film: not assessable, the reason in the SR, no probability
            assert "CHEST" in study.views[0].reason and not nums
            meanings = [it.ConceptCodeSequence[0].CodeMeaning for it in _walk(sr.ContentSequence)
                        if it.ValueType == "CODE"]
            assert any(m.startswith("Not assessable: body part CHEST") for m in meanings), meanings
        assert not [it for it in _walk(sr.ContentSequence) if it.ValueType in ("SCOORD", "SCOORD3D")]  # no boxes
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert sc.BurnedInAnnotation == "YES" and sc.pixel_array.shape[2] == 3
        pr = pydicom.dcmread(next(folder.glob("PR-*.dcm")))
        assert pr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1" and pr.StudyInstanceUID == ds.StudyInstanceUID
        ann = pr.GraphicAnnotationSequence[0]
        assert ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert ann.TextObjectSequence[0].UnformattedTextValue.startswith(f"fracdet: {study.views[0].verdict.upper()}")
        assert "GraphicObjectSequence" not in ann  # no boxes


def _walk(items):
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_render_marks_verdict_and_disclaimer():
    import numpy as np

    from fracdet.dicomnode.results import VERDICT_COLOURS, render_sc_pixels
    from fracdet.inference import Prediction

    pred = Prediction(path=None, probability=0.9, label="fractured", threshold=0.44, verdict="fracture")
    rgb = render_sc_pixels(np.full((2000, 1000), 0.5, np.float32), pred)
    assert rgb.dtype == np.uint8 and max(rgb.shape[:2]) <= 1024 + 200
    assert tuple(rgb[1, -1]) == VERDICT_COLOURS["fracture"]


@pytest.mark.parametrize("text", ["ORTHANC@127.0.0.1", "@host:1", "A@:1", "TOOLONGAETITLE123@h:1", "A@h:x"])
def test_forward_destination_is_checked(text):
    from fracdet.dicomnode.forward import parse_destination

    with pytest.raises(ValueError):
        parse_destination(text)
    assert parse_destination("ORTHANC@127.0.0.1:4242") == ("ORTHANC", "127.0.0.1", 4242)


def test_a_failed_write_leaves_no_part_of_the_study(tmp_path, predictor, monkeypatch):
    from pydicom.uid import generate_uid

    from fracdet.dicomnode import results
    from fracdet.inference import group_by_study
    from fracdet.io.dicom import read_frames

    study_uid = generate_uid()
    files = [cr_from_jpeg(SAMPLES / "fractured" / j, tmp_path / f"{i}.dcm", study_uid, number=i)
             for i, j in enumerate(["IMG0002303.jpg", "IMG0003342.jpg"])]
    preds = [predictor.predict(x) for f in files for x in read_frames(f)]
    studies = group_by_study(preds, "max", decision=predictor.decision)
    calls = []
    real_save = results._save

    def failing_save(ds, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(ds, path)

    monkeypatch.setattr(results, "_save", failing_save)
    with pytest.raises(OSError):
        results.write_results(studies, [pydicom.dcmread(f) for f in files], tmp_path / "out", predictor)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_study_that_fails_is_kept_for_a_look(tmp_path, predictor, monkeypatch):
    from pydicom.uid import generate_uid

    from fracdet.dicomnode import results
    from fracdet.dicomnode.scp import DicomNode

    node = DicomNode(predictor, tmp_path / "out", port=0)
    try:
        study_uid = generate_uid()
        spool = node.incoming / "assoc-1"
        spool.mkdir(parents=True)
        f = cr_from_jpeg(SAMPLES / "fractured" / "IMG0000092.jpg", spool / "a.dcm", study_uid)

        def broken(*args, **kwargs):
            raise RuntimeError("highdicom says no")

        monkeypatch.setattr(results, "write_results", broken)
        with pytest.raises(RuntimeError):
            node._process(study_uid, [f])
        assert (tmp_path / "out" / ".failed" / study_uid / "a.dcm").is_file()
        assert not spool.exists() and not (tmp_path / "out" / study_uid).exists()
    finally:
        node.stop()


def test_cli_predict_dicom_out_writes_the_nodes_results(tmp_path, predictor):
    from pydicom.uid import generate_uid

    from fracdet.cli import main

    study = generate_uid()
    (tmp_path / "in").mkdir()
    views = [cr_from_jpeg(SAMPLES / sub / name, tmp_path / "in" / f"v{i}.dcm", study)
             for i, (sub, name) in enumerate([("fractured", "IMG0000352.jpg"), ("not_fractured", "IMG0000048.jpg")])]
    before = [v.read_bytes() for v in views]
    out = tmp_path / "results"
    assert main(["predict", str(tmp_path / "in"), "--dicom-out", str(out), "--quiet",
                 "--out", str(tmp_path / "rows.csv")]) == 0
    written = sorted(out.rglob("*.dcm"))
    objects = [pydicom.dcmread(p) for p in written]
    srs = [d for d in objects if d.Modality == "SR"]
    assert len(srs) == 1 and len(objects) == 3  # one SR for the study, one secondary capture per view
    assert all(d.StudyInstanceUID == study for d in objects)
    referenced = {str(v.SOPInstanceUID) for v in map(pydicom.dcmread, views)}
    assert {d.SOPInstanceUID for d in objects}.isdisjoint(referenced)  # new objects, new UIDs
    assert [v.read_bytes() for v in views] == before  # the originals are never modified
