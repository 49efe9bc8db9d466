"""The readers' page at ``/`` in a real browser: Playwright for Python driving the system's
chromium (``executable_path``; Playwright's own browser download is not used). Uploads a sample
with its heatmap, waits for the verdict, checks the overlay is shown, posts a reader's verdict
and finds it in the database; saves screenshots at 1280 and 390 px wide (in the test's temporary
folder, and in ``$FRACDET_TEST_ARTIFACTS`` when set).

Skipped where Playwright or chromium is missing — failed instead under FRACDET_REQUIRE_OPTIONAL=1."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from optional import missing_optional  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "fractured" / "IMG0000352.jpg"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from fracdet.inference import load_model
    from fracdet.serve.api import create_app
    from fracdet.serve.settings import Settings

    db = tmp_path_factory.mktemp("page") / "records.sqlite"
    app = create_app(load_model(threads=1), Settings(db_url=f"sqlite:///{db}"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", f"sqlite:///{db}"
    srv.should_exit = True
    thread.join(timeout=10)


def _save(path: Path) -> None:
    dest = os.environ.get("FRACDET_TEST_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(dest) / path.name)


def test_page_in_chromium(server, tmp_path):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ModuleNotFoundError:
        missing_optional("Playwright for Python is not installed (pip install playwright)")
    browser_path = _chromium()
    if browser_path is None:
        missing_optional("no chromium binary (apt-get install chromium)")
    url, db_url = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            expect(page.get_by_text("Research use only.")).to_be_visible()
            page.check("#heatmap")
            page.set_input_files("#files", str(SAMPLE))
            verdict = page.locator("#results .verdict").first
            expect(verdict).to_be_visible(timeout=120_000)
            assert verdict.inner_text().strip() in ("fracture", "doubt", "no fracture")
            overlay = page.locator("#results img.overlay").first
            expect(overlay).to_be_visible()
            assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", overlay.element_handle())
            expect(page.locator("#results .box-note").first).to_contain_text("Cyan box")
            shot = tmp_path / "fracdet-page-1280.png"
            page.screenshot(path=str(shot), full_page=True)
            _save(shot)
            page.get_by_role("button", name="fracture", exact=True).first.click()
            expect(page.get_by_text("recorded: fractured")).to_be_visible(timeout=30_000)
            page.set_viewport_size({"width": 390, "height": 844})
            narrow = tmp_path / "fracdet-page-390.png"
            page.screenshot(path=str(narrow), full_page=True)
            _save(narrow)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
        finally:
            browser.close()
    from fracdet.serve.records import open_store

    [(pred, fb)] = open_store(db_url).reviewed()
    assert pred.file_name == SAMPLE.name and fb.reader_label == "fractured"
    assert shot.stat().st_size > 10_000
