"""A real headless Chromium (Debian's `chromium` package) driven by Playwright's Python API.

Playwright never downloads a browser here: it is pointed at the system executable. Without one
the browser tests skip with the reason, except in CI (`CI` set), where `.ci/run` installs it and
a missing browser is an error.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "handler" / "image_pipeline" / "api" / "static"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    if executable is None:
        message = "no chromium executable on PATH (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def static_page(browser):
    """A page on a made-up origin whose /static/ is the package's static directory (no server)."""
    context = browser.new_context()
    page = context.new_page()

    def serve(route):
        path = route.request.url.split("/static/", 1)[-1].split("?")[0]
        file = STATIC / path
        if "/static/" not in route.request.url or not file.is_file():
            route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>blank</title>")
            return
        content_type = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0]
        route.fulfill(status=200, content_type=content_type, body=file.read_bytes())

    page.route("http://static.test/**", serve)
    page.goto("http://static.test/")
    yield page
    context.close()
