"""Binary fracture labels and the tolerant parsing of class names."""

from __future__ import annotations

import re

__all__ = ["FRACTURED", "LABEL_NAMES", "NOT_FRACTURED", "parse_label"]

NOT_FRACTURED = 0
FRACTURED = 1
LABEL_NAMES: tuple[str, str] = ("not fractured", "fractured")

_SEPARATORS = re.compile(r"[\s_\-.]+")
_NUMERIC = re.compile(r"([01])(?:\.0*)?")

_POSITIVE = frozenset(
    {"fractured", "fracture", "fractures", "positive", "abnormal", "1", "yes", "true"}
)
_NEGATIVE = frozenset(
    {
        "not fractured", "notfractured", "not fracture",
        "non fractured", "nonfractured", "non fracture", "nonfracture",
        "unfractured", "normal", "negative", "0", "no", "false",
    }
)


def _normalise(name: str) -> str:
    return _SEPARATORS.sub(" ", name.strip().lower()).strip()


def parse_label(name: str) -> int | None:
    """Map a class name or label value to 1 (fractured), 0 (not fractured) or None.

    Case-insensitive; ``_``, ``-``, ``.`` and whitespace are treated alike and runs of
    them collapsed, so ``"NON_FRACTURED"``, ``"non-fractured"`` and ``"Non fractured"``
    all give 0. Numeric ``"1"``/``"0"`` (also ``"1.0"``) are accepted.
    """
    text = str(name).strip()
    numeric = _NUMERIC.fullmatch(text)
    if numeric:
        return int(numeric.group(1))
    key = _normalise(text)
    if key in _POSITIVE:
        return FRACTURED
    if key in _NEGATIVE:
        return NOT_FRACTURED
    return None


def accepted_names() -> list[str]:
    """Class names accepted by :func:`parse_label`, for error messages."""
    return sorted(_POSITIVE) + sorted(_NEGATIVE)
