"""Helpers of the DICOM node tests: a real Orthanc on loopback ports, CR files made from the
FracAtlas samples, free ports, a tiny C-STORE client and receiver."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cr_from_jpeg(jpeg: Path, out: Path, study_uid: str, patient: str = "Test^Patient", pid: str = "FD0001",
                 view: str = "AP", series_uid: str | None = None, number: int = 1) -> Path:
    """A Computed Radiography file (MONOCHROME2, 8 bit, explicit VR LE) from a FracAtlas JPEG."""
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CR"
    ds.PatientName = patient
    ds.PatientID = pid
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = view
    ds.PatientOrientation = ""
    ds.Manufacturer = "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


class Orthanc:
    """Debian's Orthanc, started with a temporary configuration on loopback ports."""

    def __init__(self, workdir: Path, node_port: int, node_ae: str = "FRACDET") -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae = "ORTHANC"
        config = {
            "Name": "fracdet-test", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.ae,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomModalities": {"fracdet": [node_ae, "127.0.0.1", node_port]},
            "Plugins": [], "StorageCompression": False, "DicomScuTimeout": 30, "DicomScpTimeout": 30,
            "HttpTimeout": 60, "ConcurrentJobs": 1, "SaveJobs": False,
        }
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = open(workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen([shutil.which("Orthanc") or "Orthanc", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        end = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                break
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("Orthanc did not start: " + (workdir / "orthanc.log").read_text()[-2000:])
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
        try:
            return json.loads(data)
        except ValueError:
            return data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> dict[str, Any]:
        return self.request("POST", "/instances", path.read_bytes())

    def store_to(self, modality: str, resources: list[str]) -> Any:
        return self.request("POST", f"/modalities/{modality}/store", json.dumps(resources).encode(), timeout=120)

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.request("GET", f"/instances/{orthanc_id}/file")

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        return self.get(f"/studies/{study_id}/instances")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def c_store(files: list[Path], port: int, ae_title: str = "FRACDET", abort_after: int | None = None) -> list[int]:
    """Send files to 127.0.0.1:port; ``abort_after``: abort the association after that many."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    datasets = [pydicom.dcmread(f) for f in files]
    for sop in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    statuses = []
    for i, ds in enumerate(datasets):
        if abort_after is not None and i == abort_after:
            assoc.abort()
            return statuses
        status = assoc.send_c_store(ds)
        statuses.append(int(status.Status) if status else -1)
    assoc.release()
    return statuses


class Receiver:
    """A Storage SCP that keeps what it receives (a forward destination coming up late)."""

    def __init__(self, port: int, ae_title: str = "LATE") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[Any] = []
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        self.server.shutdown()
