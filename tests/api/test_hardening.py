"""What an attacker tries against the API (a local `serve` or a deployed one), each refused with a
problem+json answer before anything is stored: writes from another site's page (CSRF), a
DNS-rebinding Host, form parts that break the multipart parser, internal reprs in error details,
and object keys that would turn into another URL."""

from __future__ import annotations

import re
import time

import pytest
from litestar.testing import TestClient

from image_pipeline import ids
from image_pipeline.api import create_app, pages
from image_pipeline.api.backends import S3Backend
from image_pipeline.api.links import key_path, object_link
from tests.images import photo

from .conftest import api_settings, wait_for

SITE = "http://api.test"  # the test client's own origin


def _stored(directory) -> list[str]:
    return (
        sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) if directory.exists() else []
    )


def _is_problem(response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers


# --- CSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # sandboxed frames, file:// pages
        {"Referer": "https://evil.example/attack.html"},  # an older browser, or Origin stripped
        {"Origin": "http://api.test.evil.example"},
    ],
)
def test_writes_from_another_sites_page_are_refused_and_store_nothing(fs_client, tmp_path, headers):
    """A multipart `fetch(..., {mode: "no-cors"})` needs no preflight: CORS never sees it."""
    client = fs_client()
    kept = client.post("/images", files={"file": ("mine.jpg", photo(64, 48), "image/jpeg")}).json()["id"]
    before = _stored(tmp_path / "images")
    attacks = [
        client.post("/images", files={"file": ("csrf.jpg", photo(64, 48), "image/jpeg")}, headers=headers),
        client.post("/images/async", files={"file": ("csrf.jpg", photo(64, 48), "image/jpeg")}, headers=headers),
        client.post(
            "/uploads", json={"filename": "csrf.jpg", "content_type": "image/jpeg", "size": 10}, headers=headers
        ),
        client.delete(f"/images/{kept}", headers=headers),
    ]
    for answer in attacks:
        _is_problem(answer, 403)
        assert "ALLOWED_ORIGINS" in answer.json()["detail"]
    assert _stored(tmp_path / "images") == before
    assert client.get(f"/images/{kept}").json()["status"] == "processed"


def test_writes_from_the_apis_own_pages_allowed_origins_and_non_browsers_pass(fs_client):
    client = fs_client(ALLOWED_ORIGINS="https://app.example.com")
    for headers in ({"Origin": SITE}, {"Referer": f"{SITE}/gallery"}, {"Origin": "https://app.example.com"}, {}):
        sent = client.post("/images", files={"file": ("a.jpg", photo(64, 48), "image/jpeg")}, headers=headers)
        assert sent.status_code == 201, (headers, sent.text)
    assert (
        client.get("/api/gallery", headers={"Origin": "https://evil.example"}).status_code != 403
    )  # reads: CORS's job


# --- DNS rebinding ---------------------------------------------------------------------------


def test_a_host_the_api_does_not_answer_to_is_refused(fs_client, tmp_path):
    """A rebinding page's requests carry its own name as Host; nothing answers to it, and no URL
    the API hands out is built from a Host."""
    client = fs_client()
    image_id = client.post("/images", files={"file": ("a.jpg", photo(64, 48), "image/jpeg")}).json()["id"]
    rebound = {"Host": "rebind.evil.example"}
    before = _stored(tmp_path / "images")
    for answer in (
        client.get(f"/images/{image_id}", headers=rebound),
        client.get("/", headers=rebound),
        client.get("/api/gallery", headers=rebound),
        client.delete(f"/images/{image_id}", headers=rebound),
        client.post("/images/async", files={"file": ("b.jpg", photo(64, 48), "image/jpeg")}, headers=rebound),
    ):
        _is_problem(answer, 400)
        assert "rebind" not in answer.text
    assert _stored(tmp_path / "images") == before

    job = client.post(
        "/images/async", files={"file": ("b.jpg", photo(64, 48), "image/jpeg")}, headers={"Host": "localhost:8000"}
    )  # loopback names are this machine's own
    assert job.status_code == 202 and job.json()["status_url"] == f"/images/jobs/{job.json()['job_id']}"
    done = wait_for(client, job.json()["status_url"])
    assert all(v["url"].startswith(f"/images/{done['id']}/") for v in done["variants"])
    assert all(v["src"].startswith("/files/processed/") for v in done["variants"])


def test_allowed_hosts_and_public_url(fs_client):
    client = fs_client(ALLOWED_HOSTS="api.test,images.example.com:8443", PUBLIC_URL="https://api.example.com/v1")
    for host, status in (
        ("images.example.com:8443", 202),
        ("images.example.com:9000", 400),
        ("api.example.com", 202),
        ("API.TEST", 202),
        ("api.test:1234", 202),
    ):
        sent = client.post(
            "/images/async", files={"file": ("a.jpg", photo(40, 30), "image/jpeg")}, headers={"Host": host}
        )
        assert sent.status_code == status, (host, sent.text)
        if status == 202:  # absolute links come from configuration, whatever Host was used
            assert sent.json()["status_url"].startswith("https://api.example.com/v1/images/jobs/")


# --- multipart parts the parser chokes on ------------------------------------------------------


@pytest.mark.parametrize(
    "disposition",
    [
        'form-data; name="file"; filename=""',
        'form-data; name="file"',
        "form-data; name=\"file\"; filename*=UTF-8''%C3%A9t%C3%A9.jpg",
    ],
)
@pytest.mark.parametrize("route", ["/images", "/images/async", "/uploads/local"])
def test_a_file_part_without_a_filename_is_a_4xx_problem(fs_client, tmp_path, disposition, route):
    client = fs_client()
    body = (
        b"--b\r\nContent-Disposition: "
        + disposition.encode()
        + b"\r\nContent-Type: image/jpeg\r\n\r\n"
        + photo(64, 48)
        + b"\r\n--b--\r\n"
    )
    answer = client.post(route, content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "filename" in answer.json()["detail"] or answer.status_code == 403
    assert _stored(tmp_path / "images") == []


# --- no internals in answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a" + b"\0" * 60,  # sniffed as GIF, then Pillow: "cannot identify image file <_io.BytesIO …>"
        b"II*\0" + b"\0" * 100,  # TIFF, the same
        b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
        b"\xff\xd8\xff\xe0" + b"\x13" * 500,
    ],
    ids=["gif", "tiff", "png", "jpeg"],
)
def test_problem_details_carry_no_reprs_or_addresses(fs_client, tmp_path, data):
    client = fs_client()
    answer = client.post("/images", files={"file": ("x.img", data, "image/jpeg")})
    _is_problem(answer, 422)
    detail = answer.json()["detail"]
    assert not re.search(r"0x[0-9a-f]{6,}|object at|<_io|BytesIO", detail), detail
    assert detail.startswith("not a readable")
    assert _stored(tmp_path / "images") == []


def test_a_storage_failure_is_answered_without_the_bucket_or_endpoint():
    backend = S3Backend("no-such-place", endpoint_url="http://127.0.0.1:9", cache_control="x", max_attempts=1)
    app = create_app(api_settings(BUCKET_NAME="no-such-place"), backend=backend)
    with TestClient(app, base_url=SITE) as client:
        answer = client.get(f"/images/{ids.new_id()}")
    _is_problem(answer, 503)
    assert answer.json()["detail"] == "storage failed, try again"


# --- keys in URLs ------------------------------------------------------------------------------


def test_keys_are_percent_encoded_in_every_url(fs_client, tmp_path, monkeypatch):
    """An object written straight to the bucket may hold `%2e%2e` (or `?`, `#`, spaces) in its
    key: the URLs pointing at it must name it, not what a browser resolves them to."""
    directory = tmp_path / "kept"
    image_id = ids.new_id()
    raw = directory / "raw" / image_id / "%2e%2e.jpg"  # outputs: processed/<id>/%2e%2e/…
    raw.parent.mkdir(parents=True)
    raw.write_bytes(photo(120, 80))
    other = directory / "raw" / "odd name?#" / "x.jpg"
    other.parent.mkdir(parents=True)
    other.write_bytes(photo(120, 80))
    cdn = "https://cdn.example.com/img/"
    client = fs_client(directory, PUBLIC_BASE_URL=cdn)
    done = wait_for(client, f"/images/{image_id}")
    assert done["status"] == "processed", done
    large = next(v for v in done["variants"] if v["name"] == "large")
    expected = f"{cdn}processed/{image_id}/%252e%252e/large.jpg"
    assert large["url"] == large["src"] == expected
    redirect = client.get(f"/images/{image_id}/large", follow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["location"] == expected

    monkeypatch.setattr(pages, "GALLERY_ENABLED", True)
    deadline = time.monotonic() + 60
    while len(items := client.get("/api/gallery").json()["items"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker finishes the second upload
    urls = {v["url"] for item in items for v in item["variants"]}
    assert expected in urls
    assert f"{cdn}processed/odd%20name%3F%23/x/large.jpg" in urls


def test_key_paths_encode_every_segment_and_keep_the_slashes():
    assert key_path("processed/a b/%2e%2e/../x?.jpg") == "processed/a%20b/%252e%252e/%2E%2E/x%3F.jpg"
    assert object_link("/files/", "processed/id/sea/large.jpg") == "/files/processed/id/sea/large.jpg"
