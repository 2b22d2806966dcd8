"""A real headless Chromium (Debian's `chromium` package) driven by Playwright's Python API.

Playwright never downloads a browser here: it is pointed at the system executable. Without one
the browser tests skip with the reason, except in CI (`CI` or `REQUIRE_CHROMIUM` set: `.ci/run`
installs it), where a missing browser is an error.
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


# Package scope: while Playwright's sync API runs, its event loop counts as the running loop, so
# it must be stopped before other packages' tests call asyncio.run().
@pytest.fixture(scope="package")
def browser():
    executable = chromium_path()
    if executable is None:
        message = "no chromium executable on PATH (apt-get install chromium)"
        if os.environ.get("CI") or os.environ.get("REQUIRE_CHROMIUM"):
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`image-pipeline serve` in its own process, as a user starts it."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        import subprocess
        import sys

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "image_pipeline.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            env={**clean, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    def wait_ready(self, timeout: float = 60) -> None:
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"serve answered / with {exc.code}:\n{self.output()}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise AssertionError(f"serve did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        import subprocess

        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._out.close()


def start_server(tmp_path_factory, *args: str, **env: str) -> Server:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = Server(list(args), env, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server
