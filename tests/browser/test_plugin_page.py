"""The upload page mounted by the plugin under a path of another app (`page=True`), in Chromium:
asked for without its trailing slash, it still loads its files and calls the API under the mount."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from litestar import Litestar, MediaType, get
from litestar_storages import FileSystemConfig, FileSystemStorage

from image_pipeline.api import ImagePipelinePlugin
from tests.images import photo

PROCESSED = '[data-state="processed"][data-loaded="true"]'


@get("/", media_type=MediaType.HTML)
async def their_home() -> str:
    return "<!doctype html><title>their app</title><p>their own page</p>"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mounted(tmp_path):
    storage = FileSystemStorage(FileSystemConfig(path=tmp_path / "store", create_dirs=True))
    app = Litestar(
        route_handlers=[their_home],
        plugins=[ImagePipelinePlugin(storage, path="/media", owner=lambda connection: "alice", page=True)],
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", tmp_path / "store"
    server.should_exit = True
    thread.join(30)


def test_the_page_under_a_mount_uploads_and_shows_the_result(browser, mounted):
    url, store = mounted
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url + "/media/") else None)
    try:
        page.goto(url + "/media")  # no trailing slash: the page's <base> keeps its URLs under the mount
        page.set_input_files("#files", [{"name": "sea.jpg", "mimeType": "image/jpeg", "buffer": photo(800, 600)}])
        page.locator(f".card{PROCESSED}").wait_for(timeout=45000)
        assert not errors, errors
        assert outside == [url + "/media"], outside  # every request but the page's own went under /media/
        made = [p.name for p in (store / "processed").rglob("*") if p.is_file()]
        assert "manifest.json" in made and "large.jpg" in made
        page.get_by_role("link", name="Gallery").click()
        page.locator(".card").first.wait_for(timeout=30000)
        assert page.url == url + "/media/gallery"
        page.goto(url + "/")
        assert page.locator("p").inner_text() == "their own page"
    finally:
        context.close()
