"""Send results on with C-STORE, never losing one: every result is first linked into an outbox
folder, and a file leaves the outbox only once the destination answered Success for it. A failed
send (destination down, refused, timed out) is retried with exponential back-off, and an outbox
left by a stopped node is sent when the node starts again."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Iterable

log = logging.getLogger("fracdet.dicomnode")


def parse_destination(text: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` → (ae, host, port); raises ValueError."""
    ae, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not ae or not host or not port.isdigit() or len(ae) > 16:
        raise ValueError(f"--forward expects AE@HOST:PORT (AE title up to 16 characters), got '{text}'")
    return ae, host, int(port)


class Forwarder:
    """C-STORE of the outbox to ``ae@host:port``, from a background thread."""

    def __init__(self, destination: str, outbox: str | Path, calling_ae: str = "FRACDET",
                 retry_base_s: float = 2.0, retry_max_s: float = 300.0, timeout_s: float = 30.0) -> None:
        self.ae_title, self.host, self.port = parse_destination(destination)
        self.outbox = Path(outbox)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.calling_ae = calling_ae
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fracdet-forward", daemon=True)
        self._thread.start()
        self._wake.set()  # an outbox left by an earlier run goes out now

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def submit(self, paths: Iterable[Path]) -> None:
        """Queue written results (hard links into the outbox, copies across file systems)."""
        for p in paths:
            target = self.outbox / f"{p.parent.name}--{p.name}"
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                os.link(p, tmp)
            except OSError:
                shutil.copyfile(p, tmp)
            os.replace(tmp, target)
        self._wake.set()

    def pending(self) -> list[Path]:
        return sorted(p for p in self.outbox.iterdir() if p.suffix == ".dcm" and not p.name.startswith("."))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            while self.pending() and not self._stop.is_set():
                if self.send_outbox():
                    self.failures = 0
                    break
                self.failures += 1
                delay = min(self.retry_max_s, self.retry_base_s * 2 ** (self.failures - 1))
                log.warning("forward to %s: %d result(s) kept in %s, retry %d in %.0f s", self.destination,
                            len(self.pending()), self.outbox, self.failures, delay)
                self._stop.wait(delay)

    def send_outbox(self) -> bool:
        """One association sending every outbox file; True when all were stored."""
        import pydicom
        from pynetdicom import AE

        files = self.pending()
        if not files:
            return True
        datasets = []
        for p in files:
            try:
                datasets.append((p, pydicom.dcmread(p)))
            except Exception as exc:  # unreadable: set aside, never deleted
                log.error("forward: %s is unreadable (%s); moved to %s", p.name, exc, self.outbox / "unreadable")
                (self.outbox / "unreadable").mkdir(exist_ok=True)
                os.replace(p, self.outbox / "unreadable" / p.name)
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            ae.add_requested_context(sop, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        except Exception as exc:
            log.debug("forward: associate failed: %s", exc)
            return False
        if not assoc.is_established:
            return False
        sent = 0
        try:
            for p, ds in datasets:
                status = assoc.send_c_store(ds)
                if status and int(getattr(status, "Status", -1)) in (0x0000, 0xB000, 0xB006, 0xB007):
                    p.unlink(missing_ok=True)
                    sent += 1
                else:
                    code = getattr(status, "Status", None) if status else None
                    log.warning("forward: %s refused %s (status %s)", self.destination, p.name,
                                "none" if code is None else f"0x{int(code):04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        log.info("forward to %s: %d of %d result(s) stored", self.destination, sent, len(datasets))
        return sent == len(datasets)
