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

    def start(*args: str, **extra: str) -> str:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        env.update(extra)
        log = (tmp_path / f"serve-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "image_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
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

    start.log = lambda: "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
    yield start
    for process, log in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _until_done(url: str, timeout: float = 90, headers: dict | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(url, timeout=10, headers=headers).json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_serve_with_the_embedded_s3_processes_a_presigned_upload(serve, tmp_path):
    url = serve()
    data = photo(1000, 750)
    grant = httpx.post(
        f"{url}/uploads", json={"filename": "dog.jpg", "content_type": "image/jpeg", "size": len(data)}, timeout=10
    )
    assert grant.status_code == 201, grant.text
    body = grant.json()
    upload = body["upload"]
    assert upload["url"].startswith("http://127.0.0.1:") and not upload["url"].startswith(url)  # straight to S3
    sent = httpx.post(
        upload["url"],
        data=upload["fields"],
        files={"file": ("dog.jpg", data, "image/jpeg")},
        headers={"Origin": url},
        timeout=30,
    )
    assert sent.status_code == 204, sent.text
    assert body["status_url"] == f"/images/{body['id']}"  # a path: never built from the request's Host
    done = _until_done(url + body["status_url"])
    assert done["status"] == "processed", done
    thumb = next(v for v in done["variants"] if v["name"] == "thumbnail")
    response = httpx.get(url + thumb["url"], follow_redirects=True, timeout=10)
    assert response.history[0].status_code == 302
    assert decode(response.content).size == (150, 150)


def test_serve_with_a_directory(serve, tmp_path):
    url = serve("--storage", str(tmp_path / "store"))
    job = httpx.post(f"{url}/images/async", files={"file": ("a.png", photo(400, 300, "PNG"), "image/png")}, timeout=30)
    assert job.status_code == 202
    done = _until_done(url + job.json()["status_url"])
    assert done["status"] == "processed"
    assert (tmp_path / "store" / "processed" / done["id"] / "a" / "manifest.json").is_file()
    assert httpx.get(f"{url}/schema/openapi.json", timeout=10).json()["info"]["title"].startswith("s3-image-pipeline")


def test_serve_refuses_other_hosts_and_cross_site_writes(serve, tmp_path):
    """What a page on another site can do to a local serve: DNS rebinding (its own name resolving
    to 127.0.0.1, so the browser sends `Host: rebind.evil.example`) and a `no-cors` multipart
    POST (no preflight). Both refused before anything is read or stored."""
    store = tmp_path / "store"
    url = serve("--storage", str(store))
    assert "API_AUTH=open" in serve.log()  # said out loud at start-up

    rebound = {"Host": "rebind.evil.example"}
    for method, path in (
        ("GET", "/api/gallery"),
        ("GET", "/"),
        ("DELETE", "/images/" + "0" * 20),
        ("POST", "/images/async"),
    ):
        answer = httpx.request(
            method,
            url + path,
            headers=rebound,
            timeout=10,
            files={"file": ("a.png", photo(40, 30, "PNG"), "image/png")} if method == "POST" else None,
        )
        assert answer.status_code == 400, (method, path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "rebind" not in answer.text

    png = {"file": ("csrf.png", photo(40, 30, "PNG"), "image/png")}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/page.html"},
        {"Origin": url.replace("127.0.0.1", "localhost")},
    ):
        answer = httpx.post(f"{url}/images/async", files=png, headers=headers, timeout=10)
        assert answer.status_code == 403, (headers, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    assert not (store / "raw").exists() or not list((store / "raw").rglob("*.png"))  # nothing stored

    assert httpx.post(f"{url}/images/async", files=png, headers={"Origin": url}, timeout=10).status_code == 202
    assert httpx.post(f"{url}/images/async", files=png, timeout=10).status_code == 202  # curl: no Origin
    local = url.replace("127.0.0.1", "localhost")  # the other name of this machine is this machine
    assert httpx.get(f"{local}/healthz", timeout=10).status_code == 200


def test_serve_with_a_jwt_secret_verifies_tokens_from_the_token_command(serve, tmp_path):
    secret = "a-local-secret-of-at-least-32-bytes-for-serve"
    url = serve("--storage", str(tmp_path / "store"), "--jwt-secret", secret)
    assert "bearer tokens (HS256" in serve.log() and "API_AUTH=open" not in serve.log()

    def token(*args: str) -> dict[str, str]:
        made = subprocess.run(
            [sys.executable, "-m", "image_pipeline.cli", "token", "--secret", secret, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        return {"Authorization": "Bearer " + made.stdout.strip()}

    alice, bob, admin = token("--sub", "alice"), token("--sub", "bob"), token("--sub", "root", "--admin")
    png = {"file": ("a.png", photo(60, 40, "PNG"), "image/png")}
    assert httpx.post(f"{url}/images/async", files=png, timeout=10).status_code == 401
    job = httpx.post(f"{url}/images/async", files=png, headers=alice, timeout=10).json()
    assert _until_done(url + job["status_url"], headers=alice)["status"] == "processed"
    assert httpx.get(url + job["status_url"], headers=bob, timeout=10).status_code == 404
    assert httpx.get(url + job["status_url"], headers=admin, timeout=10).status_code == 200
    assert [i["id"] for i in httpx.get(f"{url}/images", headers=alice, timeout=10).json()["items"]] == [job["job_id"]]


def test_serve_will_not_start_with_owners_and_nothing_to_verify_tokens(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "image_pipeline.cli", "serve", "--storage", str(tmp_path), "--port", str(_free_port())],
        env={**env, "API_AUTH": "jwt"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2 and "--jwt-secret" in done.stderr
