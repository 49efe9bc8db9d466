"""What a server is told: :class:`Settings` (limits, API key, database URL, worker threads)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB = "sqlite:///records.sqlite"
API_KEY_ENV = "FRACDET_API_KEY"


@dataclass
class Settings:
    """Limits and switches of one server.

    ``max_upload_mb``: the request body (all files together), refused with 413 beyond it.
    ``max_pixels``: rows × columns (× frames) of one image, read from its header before any
    decoding (decompression bombs: 413). ``workers``: inference threads (the event loop never
    runs the model). ``db_url``: a SQLAlchemy URL for the record of readings, or None for no
    record. ``api_key``: required as ``X-API-Key`` on every route but ``/v1/health``."""

    model_name: str = "default.fracdet"
    api_key: str | None = None
    db_url: str | None = DEFAULT_DB
    max_upload_mb: float = 64.0
    max_pixels: int = 64_000_000
    max_files: int = 32
    workers: int = 2
    force_dicom: bool = False
    dicom_window: int | None = 0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @staticmethod
    def api_key_from_env(given: str | None) -> str | None:
        """``--api-key`` when given, else ``$FRACDET_API_KEY``; empty means none."""
        key = given if given is not None else os.environ.get(API_KEY_ENV)
        return key or None


def model_name_of(path: str | Path | None) -> str:
    """The model's name as served: its file name (the shipped default: ``default.fracdet``)."""
    if path is None:
        from fracdet.artifact import default_model_path

        path = default_model_path()
    return Path(path).name
