"""``fracdet predict --engine ray`` on a local Ray (2 CPUs): every row the same as the local engine
(probabilities within 1e-5, labels, verdicts, error reasons), and ``--resume`` redoes nothing."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import pytest

from fracdet.cli import main
from optional import missing_optional
from serve_helpers import write_dicom

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        missing_optional("Ray Data is not installed (the ray extra: pip install 'fracdet[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~50 inputs: the 8 sample JPEGs under 5 names each, 5 DICOM (two in one study, one without
    an extension), and 5 odd files (empty, text named .jpg, truncated JPEG, garbage .dcm, PNG header only)."""
    root = tmp_path_factory.mktemp("archive")
    jpegs = sorted(SAMPLES.rglob("*.jpg"))
    assert len(jpegs) == 8
    for copy in range(5):
        for j in jpegs:
            dst = root / f"site{copy}" / j.parent.name / f"c{copy}_{j.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(j, dst)
    pytest.importorskip("pydicom")
    write_dicom(root / "dicom" / "a1.dcm", study="1.2.3.4", seed=1)
    write_dicom(root / "dicom" / "a2.dcm", study="1.2.3.4", seed=2)
    write_dicom(root / "dicom" / "b.dcm", seed=3)
    write_dicom(root / "dicom" / "c.dcm", seed=4, size=128)
    write_dicom(root / "dicom" / "1.2.840.99.5", seed=5)  # no extension: found by its DICM preamble
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is not an image\n")
    (bad / "truncated.jpg").write_bytes(jpegs[0].read_bytes()[:2000])
    (bad / "garbage.dcm").write_bytes(b"\x00" * 64 + b"not dicom at all")
    (bad / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def _local_rows(inputs: Path, out: Path) -> list[dict[str, str]]:
    main(["predict", str(inputs), "--out", str(out), "--quiet"])
    with open(out, newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_ray_matches_local_and_resumes(ray_local, inputs: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    local = _local_rows(inputs, tmp_path / "local.csv")
    assert len(local) >= 50
    out = tmp_path / "ray"
    code = main(["predict", "--engine", "ray", "--workers", "2", str(inputs), "--out", str(out), "--csv", "--by-study"])
    assert code == 1  # error rows, as the local engine: exit 1, never a failed job

    shards = sorted((out / "predictions").glob("*.parquet"))
    assert shards
    ray_rows = [r for f in shards for r in pq.read_table(f).to_pylist()]
    assert len(ray_rows) == len(local)
    by_path = {r["path"]: r for r in ray_rows}
    assert len(by_path) == len(ray_rows)
    worst = 0.0
    errors = 0
    for row in local:
        r = by_path[row["path"]]
        assert (r["error"] or "") == row["error"], row["path"]
        if row["error"]:
            errors += 1
            assert r["probability"] is None
            continue
        if row["verdict"] == "not assessable":  # e.g. the truncated JPEG: read, but nothing to judge
            assert r["probability"] is None and r["verdict"] == row["verdict"] and r["reason"] == row["reason"]
            continue
        worst = max(worst, abs(r["probability"] - float(row["probability"])))
        assert r["label"] == row["label"] and r["verdict"] == row["verdict"], row["path"]
        assert r["threshold"] == pytest.approx(float(row["threshold"]), abs=1e-12)
        for key in ("study_uid", "modality", "sop_uid"):
            assert (r[key] or "") == row.get(key, ""), (row["path"], key)
    assert worst <= 1e-5
    # four bad files are error rows; the truncated JPEG is decoded as far as it goes (as locally)
    assert errors == 4
    assert {Path(r["path"]).name for r in ray_rows if r["error"]} == {"empty.jpg", "notes.jpg", "garbage.dcm",
                                                                     "header.png"}
    with open(out / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(local)

    # the study step: the two views of 1.2.3.4 give one study, as `fracdet predict --by-study`
    local_studies = tmp_path / "local-studies.csv"
    main(["predict", str(inputs), "--by-study", "--out", str(local_studies), "--quiet"])
    with open(local_studies, newline="") as fh:
        want = {r["study"]: r for r in csv.DictReader(fh) if r["level"] == "study"}
    got = {r["study"]: r for r in pq.read_table(out / "studies.parquet").to_pylist() if r["level"] == "study"}
    assert set(got) == set(want)
    assert int(got["1.2.3.4"]["n_views"]) == 2
    for study, w in want.items():
        g = got[study]
        assert (g["error"] or "") == w["error"] and (g["verdict"] or "") == w["verdict"], study
        if w["probability"]:
            assert abs(g["probability"] - float(w["probability"])) <= 1e-5

    # --resume: nothing new to predict, the output is unchanged (byte for byte)
    before = _digest(out)
    assert main(["predict", "--engine", "ray", "--workers", "2", str(inputs), "--out", str(out), "--csv",
                 "--by-study", "--resume"]) == 1
    assert _digest(out) == before
    # without --resume an existing output is refused, not overwritten
    assert main(["predict", "--engine", "ray", str(inputs), "--out", str(out)]) == 2


def test_resume_predicts_only_new_inputs(ray_local, inputs: Path, tmp_path: Path) -> None:
    from fracdet.batch.engine import RayPlan, run_ray_predict

    manifest = tmp_path / "manifest.csv"
    files = sorted(str(p) for p in (inputs / "site0").rglob("*.jpg"))
    manifest.write_text("path\n" + "\n".join(files[:4]) + "\n")
    out = tmp_path / "out"
    first = RayPlan(sources=[str(manifest)], out=out, workers=1)
    assert run_ray_predict(first) == 0
    assert first.summary["predicted"] == 4
    manifest.write_text("path\n" + "\n".join(files) + "\n")
    folder_uri = (inputs / "site1").as_uri()  # a URI pyarrow lists: its 8 JPEGs
    second = RayPlan(sources=[str(manifest), folder_uri], out=out, workers=1, resume=True)
    assert run_ray_predict(second) == 0
    assert (second.summary["predicted"], second.summary["skipped"], second.summary["rows"]) == (len(files) - 4 + 8, 4,
                                                                                                len(files) + 8)
    import pyarrow.parquet as pq

    uri_rows = [r for f in sorted((out / "predictions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
                if r["path"].startswith("file://")]
    assert len(uri_rows) == 8 and all(r["error"] is None and r["probability"] is not None for r in uri_rows)


def test_actor_turns_every_failure_into_a_row(inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor without Ray: read errors and an unexpected exception in one file are rows, the rest predicted."""
    try:
        import pyarrow as pa
    except ImportError:
        missing_optional("pyarrow is not installed (the ray extra: pip install 'fracdet[ray]')")
    from fracdet.batch.engine import PredictActor

    good = sorted((inputs / "site0").rglob("*.jpg"))[:3]
    actor = PredictActor(None, "auto", threads=1, batch_size=8)
    real = actor.predictor.predict_paths

    def flaky(files, **kw):
        if any(Path(f).name == good[1].name for f in files):
            raise RuntimeError("decoder crashed")
        return real(files, **kw)

    monkeypatch.setattr(actor.predictor, "predict_paths", flaky)
    paths = [str(p) for p in good] + ["/nowhere/x.jpg"]
    batch = pa.table({"path": paths, "bytes": pa.array([p.read_bytes() for p in good] + [None], pa.large_binary()),
                      "read_error": [None, None, None, "file not found"]})
    rows = actor(batch).to_pylist()
    assert [r["path"] for r in rows] == paths
    assert [r["error"] for r in rows] == [None, "unexpected error (RuntimeError: decoder crashed)", None,
                                          "file not found"]
    assert rows[0]["probability"] is not None and rows[2]["probability"] is not None
