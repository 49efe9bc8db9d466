"""Inputs of a Ray batch: folders (walked like ``fracdet predict``), CSV/Parquet manifests with a
``path`` column, and files or URIs pyarrow can open (local, NFS, object stores pyarrow supports).

Files are read as BYTES (Ray's ``read_images`` would skip ``.dcm``) and decoded later by
fracdet's own readers, so the pixels follow the same convention as the local engine. A file that
cannot be read becomes an error reason, never a failed job.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable

from fracdet.errors import FracdetError
from fracdet.io.images import file_kind, iter_image_files

MANIFEST_SUFFIXES = (".csv", ".parquet")


def is_uri(text: str) -> bool:
    """``scheme://...`` (s3://, gs://, hdfs://, file://): opened through pyarrow.fs."""
    return "://" in text and not os.path.exists(text)


def _manifest_paths(path: Path) -> list[str]:
    """The ``path`` column of a CSV or Parquet manifest; relative paths are taken from its folder."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=None)
        if "path" not in table.column_names:
            raise FracdetError(f"{path}: a manifest needs a 'path' column (has {', '.join(table.column_names)})")
        values = [str(v) for v in table.column("path").to_pylist() if v not in (None, "")]
    else:
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if "path" not in (reader.fieldnames or []):
                    raise FracdetError(f"{path}: a manifest needs a 'path' column")
                values = [r["path"] for r in reader if r.get("path")]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FracdetError(f"{path}: cannot read manifest ({exc})") from None
    base = path.parent
    return [v if is_uri(v) or os.path.isabs(v) else str(base / v) for v in values]


def _uri_files(uri: str) -> list[str]:
    """A URI as given, or, when pyarrow says it is a folder (``s3://bucket/prefix/``), the image
    files under it (by extension: reading every object's preamble would cost a request each)."""
    import pyarrow.fs as pafs

    from fracdet.io.images import DICOM_EXTENSIONS, IMAGE_EXTENSIONS

    try:
        fs, inner = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(inner)
    except Exception:  # unknown scheme, no credentials...: reading it gives the error row
        return [uri]
    if info.type != pafs.FileType.Directory:
        return [uri]
    scheme = uri.split("://", 1)[0]
    found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    keep = IMAGE_EXTENSIONS | DICOM_EXTENSIONS
    names = sorted(f.path for f in found if f.type == pafs.FileType.File and Path(f.path).suffix.lower() in keep
                   and not any(part.startswith(".") for part in Path(f.path).relative_to(inner).parts))
    return [f"{scheme}://{n}" for n in names]


def list_inputs(sources: Iterable[str]) -> list[str]:
    """Every input, in order: folders walked like the local engine (:func:`iter_image_files`),
    manifests expanded, files and URIs as given (a missing file becomes an error row later)."""
    out: list[str] = []
    for src in sources:
        text = str(src)
        p = Path(text)
        if is_uri(text):
            out.extend(_uri_files(text))
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            out.extend(_manifest_paths(p))
        else:
            out.extend(str(f) for f in iter_image_files([p]))
    return list(dict.fromkeys(out))  # a file named twice is predicted once


def _local_reason(exc: OSError, path: str) -> str:
    """The reason the local engine gives for the same failure (see fracdet.io.images)."""
    if isinstance(exc, FileNotFoundError):
        return "broken symbolic link or symbolic link loop" if os.path.islink(path) else "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not an image file"
    return f"cannot open file ({exc.strerror or exc})"


def read_one(path: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` or ``(None, reason)``; local files with open(), URIs with pyarrow.fs."""
    if is_uri(path) and not path.startswith("file://"):
        try:
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(path)
            with fs.open_input_stream(inner) as fh:
                return fh.read(), None
        except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ...
            return None, f"cannot open file ({' '.join(str(exc).split()) or type(exc).__name__})"
    local = path[len("file://"):] if path.startswith("file://") else path
    try:
        import stat

        st = os.stat(local)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            return None, f"not a regular file ({file_kind(st.st_mode)})"
        with open(local, "rb") as fh:
            return fh.read(), None
    except OSError as exc:
        return None, _local_reason(exc, local)


def read_bytes_batch(batch: Any) -> Any:
    """Ray ``map_batches`` function on Arrow batches: ``path`` → ``path, bytes, read_error``."""
    import pyarrow as pa

    paths = [str(p) for p in batch.column("path").to_pylist()]
    data: list[bytes | None] = []
    errors: list[str | None] = []
    for p in paths:
        b, err = read_one(p)
        data.append(b)
        errors.append(err)
    return pa.table({"path": pa.array(paths, pa.string()), "bytes": pa.array(data, pa.large_binary()),
                     "read_error": pa.array(errors, pa.string())})
