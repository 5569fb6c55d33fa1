"""The documentation site: `mkdocs build --strict` passes (broken links and anchors, missing references, pages
outside the navigation all fail), the generated tables match the code, the README stays a front door, and the
built site opened from file:// in headless Chromium (Playwright, Debian's /usr/bin/chromium) shows its pages and
its search with no console error and no request leaving the site."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

try:
    import material  # noqa: F401
    import mkdocs  # noqa: F401
    import mkdocstrings  # noqa: F401
    HAVE_MKDOCS = True
except ImportError:  # CI installs them with .[dev]; a bare checkout may not have them
    HAVE_MKDOCS = False
needs_mkdocs = pytest.mark.skipif(not HAVE_MKDOCS, reason='mkdocs, mkdocs-material or mkdocstrings not installed '
                                  '(pip install -e ".[docs]"; .[dev] includes them)')


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not HAVE_MKDOCS:
        pytest.skip('mkdocs not installed (pip install -e ".[docs]")')
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                          "--site-dir", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    return out


@needs_mkdocs
def test_strict_build_has_every_page(site: Path) -> None:
    for page in ("index", "getting-started", "inspect", "serve", "on-the-line", "benchmarks", "data", "backbones",
                 "results", "development", "api", "methods/patchcore", "methods/spade", "methods/padim",
                 "methods/fastflow", "methods/riad"):
        assert (site / f"{page}.html").is_file(), page
    html = "\n".join(p.read_text() for p in site.rglob("*.html"))
    outside = re.search(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="(?:https?:)?//', html)
    assert not outside, "a resource from outside the site"
    assert (site / "search" / "search_index.js").is_file()  # search without a server


@needs_mkdocs
def test_parameter_tables_are_generated_from_the_detectors(site: Path) -> None:
    import flawmap

    for name in flawmap.list_detectors():
        page = (site / "methods" / f"{name}.html").read_text()
        for key, value in flawmap.get_detector(name).default_params().items():
            assert f"<code>{key}</code>" in page, (name, key)
    patchcore = (site / "methods" / "patchcore.html").read_text()
    assert "[1, 15]" in patchcore  # patch_size's range, read from its validation
    api = (site / "api.html").read_text()
    for name in ("get_detector", "list_detectors", "load_detector", "BaseDetector", "AnomalyResult", "load_split",
                 "scan_category", "load_folder", "evaluate", "open_predictor"):
        assert 'id="flawmap.' in api and re.search(rf'id="flawmap\.[\w.]*\b{name}"', api), name


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "```bash\npip install -e . && flawmap bench\nbash scripts/test\n```" in readme
    assert not re.search(r"issue [0-9]+", readme)


@pytest.fixture
def browser():
    if not HAVE_MKDOCS:
        pytest.skip('mkdocs not installed (pip install -e ".[docs]")')
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"headless Chromium not found at {CHROMIUM} (apt install chromium)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@needs_mkdocs
def test_site_opens_offline_in_headless_chromium(site: Path, browser) -> None:
    root = site.as_uri()
    ctx = browser.new_context()
    problems: list[str] = []

    def on_request(r) -> None:
        if not r.url.startswith((root, "data:", "blob:", "about:")):
            problems.append(f"external: {r.url}")

    ctx.on("request", on_request)
    ctx.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    for rel, text in (("index.html", "Unsupervised visual anomaly detection"), ("methods/patchcore.html", "coreset_ratio")):
        page = ctx.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(f"{root}/{rel}")
        page.wait_for_load_state("load")
        assert text in page.locator("article").inner_text(), rel
        if rel == "index.html":  # search runs from file://, offline
            page.wait_for_timeout(1000)
            page.keyboard.press("/")  # the theme's search shortcut
            page.keyboard.type("coreset", delay=30)
            page.wait_for_selector(".md-search-result__item", timeout=20000)
        page.wait_for_timeout(500)
    ctx.close()
    assert problems == [], problems
