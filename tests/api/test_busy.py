"""Image work runs off the API's event loop, at most PROCESS_CONCURRENCY images at once; beyond
that an upload waits PROCESS_WAIT_MS, then gets 503 `busy` with Retry-After and nothing is stored.

The API runs in uvicorn (in a thread of this process, so the test can hold the real processor at
its door with `GatedProcessor`) and is called over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.api.conftest import api_settings, listing
from tests.gated import GatedProcessor
from tests.images import photo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running():
    """Start an app in uvicorn on a free port; its base URL. Stopped when the test ends."""
    servers = []

    def start(app) -> str:
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)


def _fs_app(directory: Path, **env: str):
    from image_pipeline.api import create_app

    return create_app(api_settings(**env), storage_dir=directory)


def _raw_files(directory: Path) -> list[str]:
    raw = directory / "raw"
    return sorted(str(p.relative_to(directory)) for p in raw.rglob("*") if p.is_file()) if raw.exists() else []


def _post(url: str, name: str = "a.png", data: bytes | None = None) -> httpx.Response:
    data = photo(640, 480, "PNG") if data is None else data
    return httpx.post(url + "/images", files={"file": (name, data, "image/png")}, timeout=60)


def test_the_loop_answers_while_an_image_is_processed_and_a_second_upload_gets_503_busy(tmp_path, running):
    directory = tmp_path / "images"
    app = _fs_app(directory, PROCESS_CONCURRENCY="1", PROCESS_WAIT_MS="50")
    gated = GatedProcessor.replacing(app.state.api.service)
    url = running(app)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, url, "first.png")
        assert gated.entered.wait(30), "the first upload never reached the processor"
        try:
            # The image is being processed (held at the door, in its worker thread): the loop answers.
            assert httpx.get(url + "/healthz", timeout=5).text == "ok"
            stored = _raw_files(directory)
            assert len(stored) == 1 and stored[0].endswith("/first.png")

            second = _post(url, "second.png")
            assert second.status_code == 503, second.text
            assert second.headers["content-type"].startswith("application/problem+json")
            assert int(second.headers["retry-after"]) >= 1
            assert second.json()["error_code"] == "busy"
            assert _raw_files(directory) == stored  # nothing of the refused upload was stored
            assert not gated.done.is_set()
        finally:
            gated.gate.set()
        done = first.result(60)

    assert done.status_code == 201, done.text
    assert done.json()["status"] == "processed"
    third = _post(url, "third.png")  # the slot is free again
    assert third.status_code == 201, third.text
    assert len(_raw_files(directory)) == 2


def test_the_local_worker_and_uploads_share_one_bound(tmp_path, running):
    """`--storage`: an image processed in the background takes a slot like an upload does."""
    directory = tmp_path / "images"
    app = _fs_app(directory, PROCESS_CONCURRENCY="1", PROCESS_WAIT_MS="0")
    gated = GatedProcessor.replacing(app.state.api.service)
    url = running(app)

    job = httpx.post(url + "/images/async", files={"file": ("bg.png", photo(320, 240, "PNG"), "image/png")}, timeout=30)
    assert job.status_code == 202
    status_url = httpx.URL(url).join(job.json()["status_url"])  # a path unless PUBLIC_URL is set
    assert gated.entered.wait(30)
    try:
        refused = _post(url, "now.png")
        assert refused.status_code == 503 and refused.json()["error_code"] == "busy"
        assert httpx.get(status_url, timeout=5).json()["status"] == "pending"
    finally:
        gated.gate.set()
    deadline = time.monotonic() + 60
    while (status := httpx.get(status_url, timeout=5).json()["status"]) == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status == "processed"
    assert [p.rsplit("/", 1)[-1] for p in _raw_files(directory)] == ["bg.png"]


def test_over_s3_a_refused_upload_stores_nothing_in_the_bucket(s3, bucket, moto_server, running):
    from image_pipeline.api import create_app

    app = create_app(
        api_settings(BUCKET_NAME=bucket, PROCESS_CONCURRENCY="1", PROCESS_WAIT_MS="20"), endpoint_url=moto_server
    )
    gated = GatedProcessor.replacing(app.state.api.service)
    url = running(app)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, url, "first.png")
        assert gated.entered.wait(30)
        try:
            before = listing(s3, bucket)
            refused = _post(url, "second.png")
            assert refused.status_code == 503 and refused.json()["error_code"] == "busy"
            assert "retry-after" in refused.headers
            assert listing(s3, bucket) == before
        finally:
            gated.gate.set()
        assert first.result(60).status_code == 201
    assert not any(k.endswith("second.png") for k in listing(s3, bucket))


def test_the_caller_is_authenticated_before_waiting_for_a_slot(tmp_path, running):
    """With every slot taken, a request without a valid token is still a 401 at once (it neither
    waits nor learns that the server is busy); an authenticated one gets 503 busy."""
    from image_pipeline.api.auth import make_token

    secret = "a-test-secret-of-at-least-32-bytes-0123456789"
    directory = tmp_path / "images"
    app = _fs_app(directory, PROCESS_CONCURRENCY="1", PROCESS_WAIT_MS="50", API_AUTH="jwt", JWT_SECRET=secret)
    gated = GatedProcessor.replacing(app.state.api.service)
    url = running(app)
    alice = {"Authorization": f"Bearer {make_token(secret, 'alice')}"}

    def post(headers):
        return httpx.post(
            url + "/images", files={"file": ("a.png", photo(320, 240, "PNG"), "image/png")}, headers=headers, timeout=60
        )

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, alice)
        assert gated.entered.wait(30)
        try:
            assert post({}).status_code == 401
            assert post({"Authorization": "Bearer not-a-token"}).status_code == 401
            assert post(alice).status_code == 503
        finally:
            gated.gate.set()
        assert first.result(60).status_code == 201
    assert len(_raw_files(directory)) == 1
