"""The web page in a real headless Chromium (Playwright, Debian's /usr/bin/chromium): upload a defective
and a good image through the file picker, see both verdicts and overlays, no console error, no request
leaving the server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"headless Chromium not found at {CHROMIUM} (apt install chromium)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, url: str, **context_kw):
    ctx = browser.new_context(**context_kw)
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith((url, "data:")) else problems.append(f"external: {r.url}"))
    page.goto(url + "/")
    return page, problems


def _upload_and_check(page, served_model, tmp: Path) -> None:
    defect, good = tmp / "defect.png", tmp / "good.png"  # the synthetic files share names (000.png)
    shutil.copy(served_model.defect[0], defect)
    shutil.copy(served_model.good[0], good)
    page.wait_for_selector("#card[data-method]")
    assert page.locator("#card").get_attribute("data-method") == "patchcore"
    card = page.locator("#card").inner_text()
    assert "efficientnet_lite0" in card and "threshold" in card
    page.set_input_files("#files", [str(defect), str(good)])
    page.wait_for_function("document.querySelectorAll('.result[data-state=done]').length == 2", timeout=30000)
    for path, verdict in ((defect, "anomalous"), (good, "ok")):
        box = page.locator(f'.result[data-name="{path.name}"]')
        assert box.locator(".verdict").inner_text() == verdict
        assert "score" in box.locator(".nums").inner_text()
        img = box.locator("img.overlay")
        # decoded and laid out: a real PNG, not a broken-image icon
        assert img.evaluate("i => i.complete && i.naturalWidth") == 3 * 64 + 8 and img.is_visible()


def test_page_uploads_and_shows_verdicts(browser, served_model, live_server, tmp_path) -> None:
    srv = live_server()
    page, problems = _open(browser, srv.url)
    _upload_and_check(page, served_model, tmp_path)
    assert not problems, problems


def test_page_with_api_key_uses_http_basic(browser, served_model, live_server, tmp_path) -> None:
    srv = live_server(api_key="page-key")
    page, problems = _open(browser, srv.url, http_credentials={"username": "flawmap", "password": "page-key"})
    _upload_and_check(page, served_model, tmp_path)
    assert not problems, problems


def test_page_history_and_review(browser, served_model, live_server, tmp_path) -> None:
    """Upload, see the verdict, the inspection appears in the history with its thumbnail; mark it "good part"
    with a note (HTML in it stays text); the label shows, and the review filter finds it."""
    srv = live_server(log_dir=str(tmp_path / "log"), keep_images="anomalous")
    page, problems = _open(browser, srv.url)
    defect = tmp_path / "defect.png"
    shutil.copy(served_model.defect[0], defect)
    page.wait_for_selector("#card[data-method]")
    assert page.locator("#history-status").inner_text() == "no inspections yet"
    page.set_input_files("#files", [str(defect)])
    page.wait_for_function("document.querySelectorAll('.result[data-state=done]').length == 1", timeout=30000)
    assert page.locator(".result .verdict").inner_text() == "anomalous"
    page.wait_for_selector(".insp", timeout=15000)
    item = page.locator(".insp").first
    assert item.get_attribute("data-verdict") == "anomalous"
    thumb = item.locator("img.thumb")
    thumb.wait_for()
    page.wait_for_function("document.querySelector('.insp img.thumb').complete", timeout=10000)
    assert thumb.evaluate("i => i.naturalWidth") > 0  # the kept upload, served from the log by hash
    item.locator("button.btn-overlay").click()
    page.wait_for_function("(() => { const i = document.querySelector('.insp img.ov'); return i && i.complete && "
                           "i.naturalWidth > 0; })()", timeout=30000)
    assert "drift" in page.locator("#card").inner_text()
    note = "<img src=x onerror=alert(1)> glare from the new lamp"
    item.locator("input.note-in").fill(note)
    item.locator("button.btn-good").click()
    page.wait_for_selector('.insp[data-label="good"]', timeout=10000)
    labelled = page.locator('.insp[data-label="good"]')
    assert labelled.locator(".label").inner_text() == "good part"
    assert labelled.locator(".note").inner_text() == "note: " + note  # shown as text, not markup
    assert labelled.locator(".note img").count() == 0
    page.select_option("#f-label", "defect")
    page.wait_for_function("document.querySelector('#history-status').textContent == 'no inspections yet'")
    page.select_option("#f-label", "good")
    page.wait_for_selector('.insp[data-label="good"]', timeout=10000)
    from flawmap.serve import inspections as ilog

    (row,) = list(ilog.iter_rows(tmp_path / "log"))
    assert row["label"] == "good" and row["note"] == note
    assert not problems, problems
