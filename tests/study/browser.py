"""Render a local HTML file, or open the service's page, in headless Chromium (Debian's package) through
Playwright's bundled driver."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class PageCheck:
    console_errors: list[str]
    table_rows: int
    image_widths: list[int]
    pair_rows: int
    significant_marks: list[str]  # the last cell of each row marked significant, as rendered
    significant_weights: list[str]  # their computed font weights


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (CI installs Debian's 'chromium' package in .ci/run)")


def render(page_path: Path, screenshot: Path) -> PageCheck:
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            page.screenshot(path=str(screenshot), full_page=True)
            rows = page.locator("#results tbody tr").count()
            widths = page.evaluate("Array.from(document.images).map(img => img.complete ? img.naturalWidth : 0)")
            pairs = page.locator("#pairs tbody tr").count()
            marked = page.locator("#pairs tbody tr.significant td:last-child")
            marks = [marked.nth(i).inner_text() for i in range(marked.count())]
            weights = [marked.nth(i).evaluate("cell => getComputedStyle(cell).fontWeight")
                       for i in range(marked.count())]
        finally:
            browser.close()
    return PageCheck(errors, rows, widths, pairs, marks, weights)


@contextmanager
def served_page(url: str, errors: list[str]) -> Iterator[Any]:
    """The service's page at ``url`` in headless Chromium, once it has described its model; console and page
    errors are appended to ``errors``."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = find_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(accept_downloads=True)
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.startsWith('Model unet')")
            yield page
        finally:
            browser.close()
