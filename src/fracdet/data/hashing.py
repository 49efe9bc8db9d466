"""Per-file fingerprints for the data audit, and their on-disk cache.

For every file: the sha1 of its bytes (exact duplicates), the sha1 of its decoded pixels
(pixel-identical duplicates: same image, other bytes), and two perceptual hashes (DCT
"phash" from :mod:`imagehash`) of each of the 8 rotations/flips of the image:

* ``ph64``  — 64-bit phash of the 32×32 thumbnail (coarse: finds candidates),
* ``ph256`` — 256-bit phash of the 64×64 thumbnail (fine: confirms them).

Thumbnails are made once and then rotated/flipped (resizing commutes with the dihedral
transforms), so the 8 variants cost 16 small DCTs, not 8 decodes. Decoding goes through
:func:`fracdet.io.images.read_image`, so every format fracdet reads is hashed the same way.

The cache is a SQLite file (``$FRACDET_CACHE`` or ``~/.cache/fracdet/hashes``,
``hashes.sqlite``): entries keyed by (content sha1, :data:`HASH_VERSION`), plus an index
(path → size, mtime, sha1) so a warm run only ``stat``s files. Writes are one transaction.
Read failures are not cached (they are cheap to redo and may depend on installed readers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import sqlite3
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fracdet.errors import ImageReadError

__all__ = [
    "HASH_VERSION",
    "HashCache",
    "classify_error",
    "default_cache_dir",
    "dihedral",
    "fingerprint_file",
    "fingerprint_files",
    "hash_words",
]

logger = logging.getLogger(__name__)

HASH_VERSION = "fracdet-hash-1 (sha1, pixel-sha1 float32, phash 8x8@32 + 16x16@64 x 8 dihedral)"
_THUMB = 64


def default_cache_dir() -> Path:
    """``$FRACDET_CACHE`` or ``~/.cache/fracdet/hashes`` (``$XDG_CACHE_HOME`` honoured)."""
    env = os.environ.get("FRACDET_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "fracdet" / "hashes"


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 rotations/flips (k // 2 quarter turns, then a mirror if k is odd)."""
    r = np.rot90(a, k // 2)
    return np.ascontiguousarray(r[:, ::-1] if k % 2 else r)


def _phash_ints(thumbs: np.ndarray, hash_size: int) -> list[int]:
    """imagehash's ``phash`` (DCT-II of rows then columns, low ``hash_size``² block > its
    median) of a stack of thumbnails already ``4 * hash_size`` square, vectorised.
    Bit-identical to ``imagehash.phash(Image.fromarray(t), hash_size)`` (tested)."""
    from scipy.fftpack import dct

    d = dct(dct(thumbs.astype(np.float64), axis=-2), axis=-1)[:, :hash_size, :hash_size]
    flat = d.reshape(len(thumbs), -1)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return [int.from_bytes(np.packbits(b).tobytes(), "big") for b in bits]


def hash_words(value: int, bits: int) -> list[int]:
    """Split a ``bits``-bit integer into 64-bit words (most significant first)."""
    return [(value >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in reversed(range(bits // 64))]


def _perceptual(pixels: np.ndarray) -> tuple[list[str], list[str]]:
    from PIL import Image

    u8 = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    big = np.asarray(Image.fromarray(u8).resize((_THUMB, _THUMB), Image.LANCZOS))
    small = np.asarray(Image.fromarray(big).resize((_THUMB // 2, _THUMB // 2), Image.LANCZOS))
    ph64 = [f"{v:016x}" for v in _phash_ints(np.stack([dihedral(small, k) for k in range(8)]), 8)]
    ph256 = [f"{v:064x}" for v in _phash_ints(np.stack([dihedral(big, k) for k in range(8)]), 16)]
    return ph64, ph256


def classify_error(reason: str) -> str:
    """Category of an :class:`ImageReadError` reason: missing, empty, too_small, not_image, corrupt."""
    r = reason.lower()
    if "not found" in r:
        return "missing"
    if "empty file" in r:
        return "empty"
    if "too small" in r:
        return "too_small"
    if "not an image" in r or "unsupported file type" in r or "no dicom reader" in r or "text" in r:
        return "not_image"
    return "corrupt"


def fingerprint_file(path: str | Path) -> dict[str, Any]:
    """Fingerprint one file (bytes read once by us, decoded by ``read_image``).

    Returns ``{"sha1", "size", "ok", ...}``; on a read failure ``ok`` is False with
    ``error`` (one line) and ``error_kind``; ``sha1`` is None only if the bytes are unreadable.
    """
    from fracdet.io.images import read_image

    p = Path(path)
    try:
        mode = p.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
            kind = "a named pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
            return {"sha1": None, "size": None, "ok": False, "error": f"{p}: not a regular file ({kind})",
                    "error_kind": "corrupt"}
        data = p.read_bytes()
    except FileNotFoundError:
        return {"sha1": None, "size": None, "ok": False, "error": f"{p}: file not found", "error_kind": "missing"}
    except OSError as exc:
        return {"sha1": None, "size": None, "ok": False, "error": f"{p}: cannot read ({exc.strerror or exc})",
                "error_kind": "corrupt"}
    rec: dict[str, Any] = {"sha1": hashlib.sha1(data).hexdigest(), "size": len(data)}
    del data
    try:
        xray = read_image(p)
    except ImageReadError as exc:
        rec.update(ok=False, error=str(exc), error_kind=classify_error(exc.reason))
        return rec
    px = xray.pixels
    h = hashlib.sha1(f"{px.shape[0]}x{px.shape[1]}:".encode())
    h.update(np.ascontiguousarray(px, dtype=np.float32).tobytes())
    ph64, ph256 = _perceptual(px)
    w, hgt = xray.meta.get("original_size", (px.shape[1], px.shape[0]))
    rec.update(
        ok=True, error=None, error_kind=None, pixel=h.hexdigest(), width=int(w), height=int(hgt),
        mode=str(xray.meta.get("mode", "")), format=str(xray.meta.get("format", "") or ""),
        bit_depth=int(xray.meta.get("bit_depth", 8) or 8), truncated=bool(xray.meta.get("truncated", False)),
        ph64=ph64, ph256=ph256,
    )
    return rec


@contextmanager
def _quiet_reads() -> Iterator[None]:
    """The audit reports truncated files and bad EXIF itself: silence read_image's warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*truncated image")
        warnings.filterwarnings("ignore", message=r".*EXIF orientation")
        yield


class HashCache:
    """SQLite cache of fingerprints keyed by content sha1 + :data:`HASH_VERSION`."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory else default_cache_dir()
        self.path = self.dir / "hashes.sqlite"
        self.db: sqlite3.Connection | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = self._open()
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one: start a new one
            if self.db is not None:
                self.db.close()
            self.db = None
            if isinstance(exc, sqlite3.OperationalError):  # locked or unwritable: not damage
                logger.warning("hash cache %s unusable (%s); continuing without it", self.path, exc)
                return
            logger.warning("hash cache %s is damaged (%s); starting a new one", self.path, exc)
            try:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.damaged"))
                self.db = self._open()
            except (OSError, sqlite3.Error) as exc2:
                logger.warning("hash cache %s unusable (%s); continuing without it", self.path, exc2)
                self.db = None
        except OSError as exc:
            logger.warning("hash cache %s unusable (%s); continuing without it", self.path, exc)
            self.db = None

    def _open(self) -> sqlite3.Connection:
        """Connect and check the file (SQLite serialises concurrent writers; readers never see a
        half-written transaction)."""
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS entries (sha1 TEXT, version TEXT, data TEXT, "
                       "PRIMARY KEY (sha1, version))")
            db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                       "mtime_ns INTEGER, sha1 TEXT)")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def lookup(self, path: Path, size: int, mtime_ns: int) -> dict[str, Any] | None:
        """The cached fingerprint of ``path`` if its size and mtime are unchanged."""
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT size, mtime_ns, sha1 FROM files WHERE path = ?", (str(path),)).fetchone()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        if row is None or row[0] != size or row[1] != mtime_ns:
            return None
        return self.get(row[2])

    def get(self, sha1: str) -> dict[str, Any] | None:
        """The cached record of content ``sha1``; None when absent or unreadable (then recomputed)."""
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT data FROM entries WHERE sha1 = ? AND version = ?",
                                  (sha1, HASH_VERSION)).fetchone()
            rec = json.loads(row[0]) if row else None
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        except (ValueError, TypeError):  # a damaged entry: hashed again (and stored again)
            return None
        return rec if isinstance(rec, dict) and rec.get("sha1") == sha1 else None

    def _give_up(self, exc: Exception) -> None:
        """A read failed (a damaged file, a lock held too long): one warning, then no cache."""
        logger.warning("hash cache %s: cannot read (%s); continuing without it", self.path, exc)
        self.close()

    def store(self, items: Iterable[tuple[Path, int, int, dict[str, Any]]]) -> None:
        """Store (path, size, mtime_ns, record) in one transaction; failures are not cached."""
        if self.db is None:
            return
        try:
            with self.db:
                for path, size, mtime_ns, rec in items:
                    if not rec.get("ok") or not rec.get("sha1"):
                        continue
                    self.db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                                    (rec["sha1"], HASH_VERSION, json.dumps(rec)))
                    self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                    (str(path), size, mtime_ns, rec["sha1"]))
        except sqlite3.Error as exc:
            logger.warning("hash cache %s: cannot write (%s)", self.path, exc)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def fingerprint_files(paths: list[Path], cache: HashCache | None = None, progress: bool = False,
                      workers: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Fingerprints of ``paths`` (same order) and how many came from the cache."""
    from fracdet.progress import progress_over

    results: list[dict[str, Any] | None] = [None] * len(paths)
    stats: dict[int, tuple[int, int]] = {}
    todo: list[int] = []
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            todo.append(i)
            continue
        stats[i] = (st.st_size, st.st_mtime_ns)
        hit = cache.lookup(Path(p).resolve(), *stats[i]) if cache is not None else None
        if hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    hits = len(paths) - len(todo)
    if todo:
        n_workers = max(1, workers or min(4, os.cpu_count() or 1))
        with _quiet_reads(), ThreadPoolExecutor(max_workers=n_workers) as pool:
            stream = pool.map(lambda i: fingerprint_file(paths[i]), todo)
            for i, rec in zip(todo, progress_over(stream, "hashing images", total=len(todo)) if progress else stream):
                results[i] = rec
        if cache is not None:
            cache.store((Path(paths[i]).resolve(), *stats[i], results[i]) for i in todo if i in stats)  # type: ignore[misc]
    return [r for r in results if r is not None], hits
