"""Collect received images per StudyInstanceUID and process a study once it is complete: when
every association that brought images of it was released, and no new image came for a quiet
period (a PACS may send one study over several associations). An aborted association's images
are discarded — the sender counts the transfer as failed and sends again — so an aborted study
never yields a half-written result."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

log = logging.getLogger("fracdet.dicomnode")


@dataclass
class PendingStudy:
    files: dict[Hashable, list[Path]] = field(default_factory=dict)  # association → its files
    open: set[Hashable] = field(default_factory=set)
    last: float = field(default_factory=time.monotonic)

    def all_files(self) -> list[Path]:
        return [p for files in self.files.values() for p in files]


class StudyCollector:
    """Thread-safe: the SCP's handlers call :meth:`add`, :meth:`release` and :meth:`discard`;
    one worker thread calls ``process(study_uid, files)`` for each complete study, one at a time."""

    def __init__(self, process: Callable[[str, list[Path]], None], quiet_s: float = 1.0) -> None:
        self.process = process
        self.quiet_s = quiet_s
        self._pending: dict[str, PendingStudy] = {}
        self._lock = threading.Condition()
        self._busy = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="fracdet-studies", daemon=True)
        self._thread.start()

    def add(self, assoc: Hashable, study_uid: str, path: Path) -> None:
        with self._lock:
            study = self._pending.setdefault(study_uid, PendingStudy())
            study.files.setdefault(assoc, []).append(path)
            study.open.add(assoc)
            study.last = time.monotonic()

    def release(self, assoc: Hashable) -> None:
        """The association ended normally: its studies may be processed after the quiet period."""
        with self._lock:
            for study in self._pending.values():
                if assoc in study.open:
                    study.open.discard(assoc)
                    study.last = time.monotonic()
            self._lock.notify_all()

    def discard(self, assoc: Hashable) -> int:
        """The association was aborted: forget (and delete) the images it brought; return how many."""
        dropped = 0
        with self._lock:
            for uid in list(self._pending):
                study = self._pending[uid]
                study.open.discard(assoc)
                for p in study.files.pop(assoc, []):
                    p.unlink(missing_ok=True)
                    dropped += 1
                if not study.files:
                    del self._pending[uid]
            self._lock.notify_all()
        return dropped

    def idle(self) -> bool:
        with self._lock:
            return not self._pending and not self._busy

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until nothing is pending or being processed (tests, shutdown)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.05)
        return self.idle()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout=5)

    def _ready(self) -> tuple[str, list[Path]] | None:
        now = time.monotonic()
        for uid, study in self._pending.items():
            if not study.open and now - study.last >= self.quiet_s:
                del self._pending[uid]
                return uid, study.all_files()
        return None

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                ready = self._ready()
                if ready is None:
                    self._lock.wait(timeout=0.1)
                    continue
                self._busy += 1
            try:
                self.process(*ready)
            except Exception as exc:  # one bad study never stops the node
                log.error("study %s: processing failed: %s: %s", ready[0], type(exc).__name__, exc)
            finally:
                with self._lock:
                    self._busy -= 1
