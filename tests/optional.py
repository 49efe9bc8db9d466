"""Optional system parts (tcmalloc, chromium): skipped on a bare machine, required where
``FRACDET_REQUIRE_OPTIONAL=1`` (the second step of ``.ci/run``, after it installed them)."""

import os

import pytest


def missing_optional(reason: str) -> None:
    """Skip with ``reason`` — or fail, when the run says the optional parts are installed."""
    if os.environ.get("FRACDET_REQUIRE_OPTIONAL") == "1":
        pytest.fail(f"{reason} (FRACDET_REQUIRE_OPTIONAL=1: it must be installed here)")
    pytest.skip(reason)
