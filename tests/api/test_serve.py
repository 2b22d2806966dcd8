"""`image-pipeline serve` started as a user starts it, driven over HTTP: the embedded S3 with its
local event source (a presigned upload is processed by the real handler), and `--storage DIR`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.images import decode, photo

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(*args: str) -> str:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        log = (tmp_path / f"serve-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "image_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        started.append((process, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("serve did not start: " + (tmp_path / f"serve-{port}.log").read_text())

    yield start
    for process, log in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _until_done(url: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(url, timeout=10).json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_serve_with_the_embedded_s3_processes_a_presigned_upload(serve, tmp_path):
    url = serve()
    data = photo(1000, 750)
    grant = httpx.post(f"{url}/uploads", json={"filename": "dog.jpg", "content_type": "image/jpeg",
                                                "size": len(data)}, timeout=10)
    assert grant.status_code == 201, grant.text
    body = grant.json()
    upload = body["upload"]
    assert upload["url"].startswith("http://127.0.0.1:") and not upload["url"].startswith(url)  # straight to S3
    sent = httpx.post(upload["url"], data=upload["fields"], files={"file": ("dog.jpg", data, "image/jpeg")},
                      headers={"Origin": url}, timeout=30)
    assert sent.status_code == 204, sent.text
    done = _until_done(body["status_url"])
    assert done["status"] == "processed", done
    thumb = next(v for v in done["variants"] if v["name"] == "thumbnail")
    response = httpx.get(thumb["url"], follow_redirects=True, timeout=10)
    assert response.history[0].status_code == 302
    assert decode(response.content).size == (150, 150)


def test_serve_with_a_directory(serve, tmp_path):
    url = serve("--storage", str(tmp_path / "store"))
    job = httpx.post(f"{url}/images/async", files={"file": ("a.png", photo(400, 300, "PNG"), "image/png")}, timeout=30)
    assert job.status_code == 202
    done = _until_done(job.json()["status_url"])
    assert done["status"] == "processed"
    assert (tmp_path / "store" / "processed" / done["id"] / "a" / "manifest.json").is_file()
    assert httpx.get(f"{url}/schema/openapi.json", timeout=10).json()["info"]["title"].startswith("s3-image-pipeline")
