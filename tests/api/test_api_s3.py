"""The API over S3 (moto server): presigned POST sent as a browser sends it, the S3 event delivered
to the real handler, status pending → processed, the 302 to the variant's bytes, deletes, and the
refusals that must leave the bucket untouched."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from image_pipeline import ids
from image_pipeline.api.local_events import LocalEventSource
from tests.images import decode, photo

from .conftest import Recording, api_of, decode_policy, listing

MAX = 300_000


def _post_form(upload: dict, data: bytes, content_type: str = "image/jpeg") -> httpx.Response:
    """What a browser's FormData POST sends: every signed field, then the file last."""
    return httpx.post(
        upload["url"], data=upload["fields"], files={"file": ("photo.jpg", data, content_type)}, timeout=30
    )


def test_presigned_post_then_the_event_then_processed_then_the_302_gives_the_pixels(s3_client, s3, bucket, handler):
    client = s3_client(MAX_INPUT_BYTES=str(MAX))
    data = photo(1200, 800)
    grant = client.post(
        "/uploads", json={"filename": "../Holiday 2024/été.JPG", "content_type": "image/jpeg", "size": len(data)}
    )
    assert grant.status_code == 201, grant.text
    body = grant.json()
    image_id = body["id"]
    assert ids.is_valid(image_id)
    key = f"raw/{image_id}/ete.jpg"  # the server's id + a sanitised leaf of the name, never a path
    assert body["upload"]["fields"]["key"] == key
    assert body["status_url"] == f"/images/{image_id}"
    expires = datetime.fromisoformat(body["expires_at"])
    assert 540 <= (expires - datetime.now(UTC)).total_seconds() <= 660

    policy = decode_policy(body["upload"]["fields"])
    conditions = policy["conditions"]
    assert {"key": key} in conditions and {"bucket": bucket} in conditions
    assert ["content-length-range", 1, MAX] in conditions
    assert ["starts-with", "$Content-Type", "image/"] in conditions
    assert body["upload"]["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # SigV4, as every region needs
    signed_expiry = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert 540 <= (signed_expiry - datetime.now(UTC)).total_seconds() <= 660

    assert client.get(f"/images/{image_id}").status_code == 404  # nothing uploaded yet
    sent = _post_form(body["upload"], data)
    assert sent.status_code == 204, sent.text
    assert listing(s3, bucket) == [key]

    pending = client.get(f"/images/{image_id}").json()
    assert pending["status"] == "pending" and pending["variants"] == []

    source = LocalEventSource("unused", bucket)
    assert source.poll_once(s3, handler.lambda_handler) == 1  # the ObjectCreated event, to the real handler
    assert source.poll_once(s3, handler.lambda_handler) == 0  # delivered once

    done = client.get(f"/images/{image_id}").json()
    assert done["status"] == "processed" and done["error_code"] is None
    assert done["source"]["width"] == 1200 and done["source"]["key"] == key
    assert done["placeholder"]["blurhash"]
    by_name = {v["name"]: v for v in done["variants"]}
    assert set(by_name) == {"thumbnail", "medium", "large"}
    medium = by_name["medium"]
    assert (medium["width"], medium["height"], medium["content_type"]) == (800, 533, "image/webp")
    assert medium["url"] == f"/images/{image_id}/medium"

    redirect = client.get(f"/images/{image_id}/medium", follow_redirects=False)
    assert redirect.status_code == 302
    location = redirect.headers["location"]
    assert location.startswith(f"{s3.meta.endpoint_url}/{bucket}/processed/{image_id}/ete/medium.webp?")
    fetched = httpx.get(location, timeout=30)
    assert fetched.status_code == 200
    image = decode(fetched.content)
    assert image.format == "WEBP" and image.size == (800, 533) and len(fetched.content) == medium["bytes"]
    assert client.get(f"/images/{image_id}/huge", follow_redirects=False).status_code == 404


def test_public_base_url_links_straight_to_the_cdn(s3_client, s3, bucket):
    client = s3_client(PUBLIC_BASE_URL="https://cdn.example.com/img")
    created = client.post("/images", files={"file": ("a.png", photo(400, 300, "PNG"), "image/png")})
    assert created.status_code == 201, created.text
    body = created.json()
    thumb = next(v for v in body["variants"] if v["name"] == "thumbnail")
    assert thumb["url"] == f"https://cdn.example.com/img/processed/{body['id']}/a/thumbnail.webp"
    redirect = client.get(f"/images/{body['id']}/thumbnail", follow_redirects=False)
    assert redirect.status_code == 302 and redirect.headers["location"] == thumb["url"]


def test_synchronous_upload_is_processed_in_the_request_and_delete_removes_everything(s3_client, s3, bucket):
    client = s3_client()
    created = client.post("/images", files={"file": ("cat photo.jpg", photo(640, 480), "image/jpeg")})
    assert created.status_code == 201, created.text
    body = created.json()
    image_id = body["id"]
    assert body["status"] == "processed" and len(body["variants"]) == 3
    stored = listing(s3, bucket)
    assert f"raw/{image_id}/cat-photo.jpg" in stored and f"processed/{image_id}/cat-photo/manifest.json" in stored
    assert s3.get_object_tagging(Bucket=bucket, Key=f"raw/{image_id}/cat-photo.jpg")["TagSet"] == [
        {"Key": "image-pipeline-status", "Value": "processed"}
    ]

    assert client.delete(f"/images/{image_id}").status_code == 204
    assert listing(s3, bucket) == []
    assert client.get(f"/images/{image_id}").status_code == 404
    assert client.delete(f"/images/{image_id}").status_code == 404


def test_a_rejected_upload_reads_as_failed_with_its_code(s3_client, s3, bucket, handler):
    client = s3_client()
    grant = client.post("/uploads", json={"filename": "x.jpg", "content_type": "image/jpeg", "size": 100}).json()
    assert _post_form(grant["upload"], b"\xff\xd8\xff\xe0 not really a jpeg" * 3).status_code == 204
    LocalEventSource("unused", bucket).poll_once(s3, handler.lambda_handler)
    body = client.get(grant["status_url"]).json()
    assert (body["status"], body["error_code"], body["variants"]) == ("failed", "corrupt_image", [])
    assert client.get(f"/images/{grant['id']}/thumbnail", follow_redirects=False).status_code == 404
    assert client.delete(f"/images/{grant['id']}").status_code == 204
    assert listing(s3, bucket) == []


@pytest.mark.parametrize(
    ("declared", "status", "code"),
    [
        ({"content_type": "application/pdf", "size": 1000}, 415, "unsupported_type"),
        ({"content_type": "image/svg+xml", "size": 1000}, 415, "unsupported_type"),
        ({"content_type": "image/jpeg", "size": MAX + 1}, 413, "too_large"),
    ],
)
def test_declared_type_or_size_is_refused_before_anything_is_signed(s3_client, s3, bucket, declared, status, code):
    client = s3_client(MAX_INPUT_BYTES=str(MAX))
    response = client.post("/uploads", json={"filename": "f.jpg", **declared})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["error_code"] == code and "upload" not in problem
    assert listing(s3, bucket) == []


def test_a_type_not_in_allowed_types_is_refused(s3_client, bucket):
    client = s3_client(ALLOWED_TYPES="jpeg,png")
    assert (
        client.post("/uploads", json={"filename": "a.webp", "content_type": "image/webp", "size": 10}).status_code
        == 415
    )
    assert (
        client.post("/uploads", json={"filename": "a.png", "content_type": "image/png", "size": 10}).status_code == 201
    )


def test_malformed_upload_requests_are_400(s3_client):
    client = s3_client()
    for body in ({"filename": "a.jpg"}, {"filename": "a.jpg", "content_type": "image/jpeg", "size": "big"}, [1]):
        response = client.post("/uploads", json=body)
        assert response.status_code == 400, body
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (
        client.post("/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size": 0}).status_code == 400
    )


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("big.jpg", photo(1600, 1200, quality=100) + b"\0" * MAX, 413, "too_large"),
        ("doc.jpg", b"%PDF-1.7\n" + b"x" * 500, 415, "unsupported_type"),
        ("broken.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 500, 422, "corrupt_image"),
        ("empty.jpg", b"", 400, "empty_file"),
    ],
)
def test_synchronous_refusals_store_nothing(s3_client, s3, bucket, name, data, status, code):
    client = s3_client(MAX_INPUT_BYTES=str(MAX))
    response = client.post("/images", files={"file": (name, data, "image/jpeg")})
    assert response.status_code == status, response.text
    assert response.json()["error_code"] == code
    assert listing(s3, bucket) == []
    async_response = client.post("/images/async", files={"file": (name, data, "image/jpeg")})
    if code != "corrupt_image":  # decoding is the pipeline's job in the background path
        assert async_response.status_code == status
        assert listing(s3, bucket) == []


def test_a_body_over_the_limit_is_refused_while_streaming(s3_client, s3, bucket):
    client = s3_client(MAX_INPUT_BYTES=str(MAX))

    def chunks():
        boundary = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        yield boundary
        for _ in range(100):  # 6.4 MB announced by no Content-Length: counted as it arrives
            yield b"\xff" * 65536

    response = client.post("/images", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert listing(s3, bucket) == []


def test_async_upload_is_left_to_the_event_pipeline(s3_client, s3, bucket, handler):
    client = s3_client()
    accepted = client.post("/images/async", files={"file": ("a.jpg", photo(500, 500), "image/jpeg")})
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["status_url"] == f"/images/jobs/{job['job_id']}"
    assert client.get(job["status_url"]).json()["status"] == "pending"
    LocalEventSource("unused", bucket).poll_once(s3, handler.lambda_handler)
    assert client.get(job["status_url"]).json()["status"] == "processed"


def test_ids_are_validated_before_any_storage_call(s3_client):
    client = s3_client()
    api = api_of(client)
    recording = api.backend.store = Recording(api.backend.store)
    valid_but_unknown = ids.new_id()
    bad = [
        "%2e%2e",
        "." * 20,
        "a%2Fb",
        "%00",
        "u" * 20,
        "i" * 20,
        valid_but_unknown.upper(),
        valid_but_unknown + "0",
        "..%2F..%2Fetc%2Fpasswd",
        "%20" + valid_but_unknown[1:],
        "ünïcödé",
    ]
    for image_id in bad:
        for method, path in (
            ("GET", f"/images/{image_id}"),
            ("GET", f"/images/{image_id}/thumbnail"),
            ("GET", f"/images/jobs/{image_id}"),
            ("DELETE", f"/images/{image_id}"),
        ):
            before = len(recording.calls)
            response = client.request(method, path, follow_redirects=False)
            assert response.status_code == 404, (method, path, response.status_code)
            assert len(recording.calls) == before, (method, path, recording.calls[before:])
    assert recording.calls == [], bad
    # a well-formed id reaches storage (and is simply not there)
    assert client.get(f"/images/{valid_but_unknown}").status_code == 404
    assert recording.calls


def test_openapi_schema_lists_the_endpoints(s3_client):
    schema = s3_client().get("/schema/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/uploads",
        "/images",
        "/images/async",
        "/images/{image_id}",
        "/images/{image_id}/{variant}",
        "/images/jobs/{job_id}",
    ):
        assert path in paths, path
    assert set(paths["/images/{image_id}"]) >= {"get", "delete"}


def test_ids_sort_newest_first(s3_client, s3, bucket):
    client = s3_client()
    made = []
    for _ in range(3):
        made.append(
            client.post("/images/async", files={"file": ("a.jpg", photo(64, 64), "image/jpeg")}).json()["job_id"]
        )
        time.sleep(0.002)
    listed = [k.split("/")[1] for k in listing(s3, bucket)]
    assert listed == made[::-1]
