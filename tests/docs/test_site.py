"""The built documentation site (``./run.sh docs``) in a real browser: headless Chromium from the Debian archive
(``apt-get install chromium``), driven by Playwright with that executable (Playwright's own browser download is
not used). The index and the tutorial load, every figure on them decodes (``naturalWidth > 0``), and no page
of the site shows a build error or a traceback. Skips with the reason when the site is not built (CI builds
it, then runs this file) or no browser is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parents[2] / "docs" / "_build" / "html"
ERRORS = ("Traceback (most recent call last)", "Error in notebook", "CellExecutionError", "[autodoc] failed",
          "Exception occurred", "ModuleNotFoundError")

if not (SITE / "index.html").exists():
    pytest.skip("the documentation site is not built (./run.sh docs builds it into docs/_build/html)",
                allow_module_level=True)


def chromium() -> str | None:
    for name in (os.environ.get("TL_LANGNEURONS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def test_no_page_shows_a_build_error():
    """Every built page, as text: no traceback or execution error was rendered into it."""
    pages = sorted(SITE.rglob("*.html"))
    assert len(pages) >= 20
    shown = [(p.relative_to(SITE), e) for p in pages for e in ERRORS if e in p.read_text(encoding="utf-8")]
    assert shown == []


def test_the_tutorial_was_executed_with_its_figures():
    html = (SITE / "tutorial.html").read_text(encoding="utf-8")
    assert html.count('<img alt="_images/') >= 2 or html.count("_images/") >= 2
    assert "Language neurons of gemma-3-270m" in html  # find's summary, printed by the executed cell


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[docs]')")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.mark.parametrize("name, figures", [("index.html", 0), ("tutorial.html", 2), ("cli.html", 0),
                                           ("api/finding.html", 0), ("results.html", 0)])
def test_page_loads_in_chromium_with_its_figures(page, name, figures):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto((SITE / name).as_uri(), wait_until="load")
    assert response is None or response.ok
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=20000)
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
    assert len(images) >= figures, images
    assert [src for src, width in images if width == 0] == []  # every figure decoded
    text = page.inner_text("body")
    assert page.title() and "tl-langneurons" in page.title()
    assert not any(e in text for e in ERRORS), [e for e in ERRORS if e in text]
    assert errors == []  # no script error on the page
