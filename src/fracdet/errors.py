"""Exceptions whose message is one line a person can act on."""

from __future__ import annotations

from pathlib import Path


class FracdetError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line, never a traceback."""


class ImageReadError(FracdetError):
    """An input file could not be read as an image."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(FracdetError):
    """A dataset folder or manifest is not usable as given."""


class WeightsNotFoundError(FracdetError):
    """Pretrained weights could not be resolved offline."""


class ArtifactError(FracdetError):
    """A model artifact is missing, corrupt or of an unknown version."""
