"""Test-wide settings: keep every cache inside pytest's temporary folder."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_hash_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("FRACDET_CACHE", str(tmp_path_factory.mktemp("fracdet-cache")))
    yield
    mp.undo()
