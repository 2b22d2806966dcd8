"""The CDN's miss function on moto server: what CloudFront gets back for each kind of request, what
is stored, and that stored outputs are answered without image work."""

from __future__ import annotations

import json
import threading

import pytest
from PIL import Image

from image_pipeline.ondemand import miss as miss_module
from tests.images import decode, encode, photo
from tests.ondemand.conftest import KEY, body, call, process

PREFIX = "processed/od/pic/"


def upload(s3, bucket: str, key: str = "raw/od/pic.jpg", data: bytes | None = None) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=data if data is not None else photo(1200, 800))


def keys(s3, bucket: str, prefix: str = PREFIX) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def counting(miss) -> list[int]:
    """Counts the image work the service starts (the real processor still runs)."""
    calls = []
    original = miss.runtime.service._process

    async def spy(processor, data, **subject):
        calls.append(len(data))
        return await original(processor, data, **subject)

    miss.runtime.service._process = spy
    return calls


def test_an_allowlisted_width_is_made_stored_and_then_served_without_image_work(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    assert process(miss, bucket, "raw/od/pic.jpg").status == "processed"
    work = counting(miss)

    first = call(miss, f"/{PREFIX}w640.webp")
    assert first["statusCode"] == 200
    assert first["headers"]["Content-Type"] == "image/webp"
    assert first["headers"]["Cache-Control"] == "public, max-age=31536000"
    image = decode(body(first))
    assert (image.format, image.size) == ("WEBP", (640, 427))  # aspect kept
    stored = s3.get_object(Bucket=bucket, Key=f"{PREFIX}w640.webp")
    assert stored["Body"].read() == body(first)
    assert stored["ContentType"] == "image/webp" and stored["CacheControl"] == "public, max-age=31536000"
    assert stored["Metadata"]["width"] == "640" and stored["Metadata"]["source-etag"]
    assert len(work) == 1

    again = call(miss, f"/{PREFIX}w640.webp")
    assert again["statusCode"] == 200 and body(again) == body(first)
    assert len(work) == 1  # a stored output: one GET, no image work


def test_the_negotiated_fallback_is_jpeg_for_photos_and_png_where_there_is_alpha(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    rgba = Image.new("RGBA", (800, 400), (20, 200, 40, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 400, 400))  # the left half transparent
    upload(s3, bucket, "raw/od/logo.png", encode(rgba, "PNG"))
    for key in ("raw/od/pic.jpg", "raw/od/logo.png"):
        assert process(miss, bucket, key).status == "processed"

    photo_fallback = call(miss, f"/{PREFIX}w640")
    logo_fallback = call(miss, "/processed/od/logo/w640")

    assert photo_fallback["headers"]["Content-Type"] == "image/jpeg"
    assert decode(body(photo_fallback)).format == "JPEG"
    logo = decode(body(logo_fallback))
    assert logo_fallback["headers"]["Content-Type"] == "image/png"
    assert (logo.format, logo.mode, logo.size) == ("PNG", "RGBA", (640, 320))
    assert logo.getpixel((10, 160))[3] == 0 and logo.getpixel((630, 160)) == (20, 200, 40, 255)
    assert s3.head_object(Bucket=bucket, Key="processed/od/logo/w640")["ContentType"] == "image/png"


def test_widths_outside_the_allowlist_need_a_valid_signature(s3, bucket, cdn):
    from image_pipeline.ondemand.signing import sign

    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    path = f"/{PREFIX}w641.webp"

    missing = call(miss, path)
    tampered = call(miss, path, "sig=" + sign(KEY.encode(), path).partition("sig=")[2][:-2] + "xx")
    other_size = call(miss, path, sign(KEY.encode(), f"/{PREFIX}w642.webp").partition("?")[2])
    assert [r["statusCode"] for r in (missing, tampered, other_size)] == [403, 403, 403]
    assert json.loads(missing["body"])["detail"].startswith("width 641 is not in the allowlist")
    assert missing["headers"]["Content-Type"] == "application/problem+json"
    assert keys(s3, bucket) == [
        f"{PREFIX}large.jpg",
        f"{PREFIX}manifest.json",
        f"{PREFIX}medium.webp",
        f"{PREFIX}thumbnail.webp",
    ]  # nothing made

    query = sign(KEY.encode(), path).partition("?")[2]
    good = call(miss, path, query)
    assert good["statusCode"] == 200 and decode(body(good)).size[0] == 641
    avif = call(miss, f"/{PREFIX}w641.avif", query)  # one signature: every format of that width
    assert avif["statusCode"] == 200 and decode(body(avif)).format == "AVIF"


def test_signatures_and_bad_paths_are_refused_before_any_storage_call(s3, bucket, cdn):
    # An endpoint nobody listens on: any storage call would end as a 503.
    dead = cdn(endpoint="http://127.0.0.1:9", S3_MAX_ATTEMPTS="1")
    assert call(dead, f"/{PREFIX}w641.webp")["statusCode"] == 403
    assert call(dead, f"/{PREFIX}w0.webp")["statusCode"] == 400
    assert call(dead, f"/{PREFIX}w640.webp")["statusCode"] == 503  # allowed: it does reach storage


@pytest.mark.parametrize(
    "leaf", ["w0.webp", "w8193.webp", "wabc.webp", "w640.gif", "w640.webp.x", "w0640.webp", "w640.", "w64x"]
)
def test_malformed_width_urls_are_400_problems(s3, bucket, cdn, leaf):
    miss = cdn()
    response = call(miss, f"/{PREFIX}{leaf}")
    assert response["statusCode"] == 400
    problem = json.loads(response["body"])
    assert problem["status"] == 400 and problem["detail"]


def test_unknown_rejected_and_foreign_paths_are_404_and_write_nothing(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket, "raw/od/notes.jpg", b"just some text, named .jpg")
    assert process(miss, bucket, "raw/od/notes.jpg").status == "failed"

    for path in (
        "/processed/od/nobody/w640.webp",  # never uploaded
        "/processed/od/notes/w640.webp",  # rejected: no manifest
        "/raw/od/pic.jpg",  # not an output
        "/processed/od/../raw/w640.webp",
        "/processed//w640.webp",
        "/processed/od/pic/large.jpg",  # an eager variant is made on upload, never here
        "/processed/od/pic/medium.jpg",
    ):
        assert call(miss, path)["statusCode"] == 404, path
    assert call(miss, f"/{PREFIX}w640.webp", method="POST")["statusCode"] == 405
    assert keys(s3, bucket, "processed/") == []


def test_never_upscaled_a_width_over_the_source_gives_the_source_width(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket, data=photo(1000, 500))
    process(miss, bucket, "raw/od/pic.jpg")
    response = call(miss, f"/{PREFIX}w3840.jpg")
    assert decode(body(response)).size == (1000, 500)


def test_an_output_over_max_pixels_is_refused(s3, bucket, cdn):
    upload(s3, bucket, data=photo(1200, 800))
    process(cdn(), bucket, "raw/od/pic.jpg")
    strict = cdn(MAX_PIXELS="100000")  # the limit was lowered after the upload
    response = call(strict, f"/{PREFIX}w640.webp")
    assert response["statusCode"] == 422
    assert json.loads(response["body"])["error_code"] == "too_many_pixels"
    assert f"{PREFIX}w640.webp" not in keys(s3, bucket)


def test_a_lazy_variant_is_made_on_first_request_at_the_key_an_eager_one_would_have(s3, bucket, cdn):
    miss = cdn(VARIANTS="thumbnail:150x150:cover:webp;xl:2400x2400:jpeg:lazy")
    upload(s3, bucket, data=photo(3000, 2000))
    assert process(miss, bucket, "raw/od/pic.jpg").status == "processed"
    record = json.loads(s3.get_object(Bucket=bucket, Key=f"{PREFIX}manifest.json")["Body"].read())
    assert [v["name"] for v in record["variants"]] == ["thumbnail"]
    assert record["lazy_variants"] == [
        {"name": "xl", "key": f"{PREFIX}xl.jpg", "format": "jpeg", "content_type": "image/jpeg"}
    ]
    assert f"{PREFIX}xl.jpg" not in keys(s3, bucket)  # not made on upload

    response = call(miss, f"/{PREFIX}xl.jpg")
    assert response["statusCode"] == 200
    assert decode(body(response)).size == (2400, 1600)
    assert f"{PREFIX}xl.jpg" in keys(s3, bucket)
    assert call(miss, f"/{PREFIX}xl.webp")["statusCode"] == 404  # not this variant's format


def test_eight_containers_asking_at_once_store_one_object_and_answer_the_same_bytes(s3, bucket, cdn):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    upload(s3, bucket)
    process(cdn(), bucket, "raw/od/pic.jpg")
    containers = [cdn() for _ in range(8)]
    start, answers = threading.Barrier(8), [None] * 8

    def ask(i):
        start.wait()
        answers[i] = call(containers[i], f"/{PREFIX}w1080.avif")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {a["statusCode"] for a in answers} == {200}
    assert len({body(a) for a in answers}) == 1
    versions = s3.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}w1080.avif").get("Versions", [])
    assert len(versions) == 1  # S3's conditional write: one stored object
    assert s3.get_object(Bucket=bucket, Key=f"{PREFIX}w1080.avif")["Body"].read() == body(answers[0])


def test_outputs_over_the_response_limit_are_stored_then_redirected_to_themselves(s3, bucket, cdn, monkeypatch):
    monkeypatch.setattr(miss_module, "INLINE_MAX", 1000)
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    response = call(miss, f"/{PREFIX}w1080.png")
    assert response["statusCode"] == 302
    assert response["headers"] == {"Location": f"/{PREFIX}w1080.png", "Cache-Control": "no-store"}
    png = decode(s3.get_object(Bucket=bucket, Key=f"{PREFIX}w1080.png")["Body"].read())
    assert (png.format, png.width) == ("PNG", 1080)


def test_head_requests_make_the_output_and_answer_without_a_body(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    response = call(miss, f"/{PREFIX}w256.webp", method="HEAD")
    assert response["statusCode"] == 200 and response["body"] == ""
    assert (
        int(response["headers"]["Content-Length"])
        == s3.head_object(Bucket=bucket, Key=f"{PREFIX}w256.webp")["ContentLength"]
    )


def test_refusals_that_a_signature_or_time_can_change_are_never_cacheable(s3, bucket, cdn):
    """CloudFront caches an error for the larger of its max-age and the distribution's
    ErrorCachingMinTTL (0 for 403/404/5xx in the templates). The cache key has no `sig`, so a 403
    kept for an unsigned request would answer the signed one too; a 404 kept while the image is
    still being processed would hide it once it is. Malformed paths stay malformed: cacheable."""
    miss = cdn()
    unsigned = call(miss, f"/{PREFIX}w641.webp")
    not_yet = call(miss, f"/{PREFIX}w640.webp")  # no manifest yet: still processing, or never uploaded
    malformed = call(miss, f"/{PREFIX}w0640.webp")
    assert (unsigned["statusCode"], unsigned["headers"]["Cache-Control"]) == (403, "no-store")
    assert (not_yet["statusCode"], not_yet["headers"]["Cache-Control"]) == (404, "no-store")
    assert (malformed["statusCode"], malformed["headers"]["Cache-Control"]) == (400, "public, max-age=300")


def test_an_eager_variant_named_like_a_width_url_is_404_never_a_cacheable_400(s3, bucket, cdn):
    miss = cdn(VARIANTS="wide:2000x0:webp;thumbnail:150x150:cover:webp")
    upload(s3, bucket)  # not processed yet: its wide.webp does not exist
    response = call(miss, f"/{PREFIX}wide.webp")
    assert response["statusCode"] == 404 and response["headers"]["Cache-Control"] == "no-store"
    assert call(miss, f"/{PREFIX}wabc.webp")["statusCode"] == 400  # not a variant: a malformed width URL
