"""Ratio URLs through the CDN's miss function on moto server (`/processed/…/w640-16x9.webp`): made,
stored and served; refused spellings and unsigned ratios before any storage call; and their
lifecycle: removed with the image, dropped when it is processed again."""

from __future__ import annotations

import json

from image_pipeline.ondemand.signing import sign
from image_pipeline.service import ObjectRef
from tests.images import decode, photo
from tests.ondemand.conftest import KEY, body, call, process
from tests.ondemand.test_cdn_function import PREFIX, counting, keys, upload


def test_a_ratio_leaf_is_made_stored_and_then_served_without_image_work(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    assert process(miss, bucket, "raw/od/pic.jpg").status == "processed"
    work = counting(miss)
    for leaf, fmt, size in (
        ("w640-16x9.webp", "WEBP", (640, 360)),
        ("w640-9x16.avif", "AVIF", (450, 800)),  # the 9:16 window of 1200×800 is 450 wide: never upscaled
        ("w256-1x1", "JPEG", (256, 256)),  # the negotiated fallback the CloudFront Function passes on
    ):
        first = call(miss, f"/{PREFIX}{leaf}")
        assert first["statusCode"] == 200, first
        assert (decode(body(first)).format, decode(body(first)).size) == (fmt, size)
        stored = s3.get_object(Bucket=bucket, Key=PREFIX + leaf)
        assert stored["Body"].read() == body(first) and stored["Metadata"]["variant"] == leaf.partition(".")[0]
    assert len(work) == 3
    assert (
        body(call(miss, f"/{PREFIX}w640-16x9.webp"))
        == s3.get_object(Bucket=bucket, Key=PREFIX + "w640-16x9.webp")["Body"].read()
    )
    assert len(work) == 3  # stored: no image work


def test_bad_and_unsigned_ratio_leaves_are_refused_before_any_storage_call(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    before = keys(s3, bucket)
    bad = call(miss, f"/{PREFIX}w640-32x18.webp")
    assert bad["statusCode"] == 400 and "use 16x9" in json.loads(bad["body"])["detail"]
    assert bad["headers"]["Cache-Control"] == "public, max-age=300"
    unsigned = call(miss, f"/{PREFIX}w640-5x4.webp")
    assert unsigned["statusCode"] == 403 and unsigned["headers"]["Cache-Control"] == "no-store"
    assert keys(s3, bucket) == before
    query = sign(KEY.encode(), f"/{PREFIX}w640-5x4.webp").partition("?")[2]
    signed = call(miss, f"/{PREFIX}w640-5x4.avif", query)  # the signature covers every format of it
    assert signed["statusCode"] == 200 and decode(body(signed)).size == (640, 512)


def test_ratio_outputs_go_with_the_image_and_with_a_new_upload(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    for leaf in ("w640-16x9.webp", "w256-1x1", "w640.webp"):
        assert call(miss, f"/{PREFIX}{leaf}")["statusCode"] == 200

    upload(s3, bucket, data=photo(900, 900))  # replaced: another picture, processed again
    assert process(miss, bucket, "raw/od/pic.jpg").status == "processed"
    assert not any(k.rpartition("/")[2] in ("w640-16x9.webp", "w256-1x1", "w640.webp") for k in keys(s3, bucket))
    assert decode(body(call(miss, f"/{PREFIX}w640-16x9.webp"))).size == (640, 360)

    s3.delete_object(Bucket=bucket, Key="raw/od/pic.jpg")
    assert miss.runtime.handle(ObjectRef(bucket, "raw/od/pic.jpg", kind="removed")).status == "removed"
    assert keys(s3, bucket) == []
