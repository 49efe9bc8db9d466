"""Small file-system helpers: nothing written is ever half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def sha256_of_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (indented, UTF-8)."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


_CHECK_MARK = b"\nfracdet-sha256:"


def write_verified(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically with its SHA-256 appended, for :func:`read_verified`: a cache
    entry that two processes may write at once (unique temporary names, one rename each)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data + _CHECK_MARK + hashlib.sha256(data).hexdigest().encode())
    return Path(path)


def read_verified(path: str | Path) -> bytes | None:
    """The data :func:`write_verified` wrote, or None when the file is missing, cut or damaged."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    data, mark, digest = raw.rpartition(_CHECK_MARK)
    if not mark or hashlib.sha256(data).hexdigest().encode() != digest:
        return None
    return data
