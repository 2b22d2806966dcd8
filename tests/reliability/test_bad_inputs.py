"""Hostile uploads through the real handler on a real S3 API: every bad file is tagged with its
code and produces nothing, every good file in the same batch still gets its variants, and no
mutation of a valid image makes the handler raise, hang or leave a half-written result."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.images import decode, photo
from tests.reliability.generated_inputs import bad_cases, good_cases
from tests.reliability.support import (
    ERROR,
    REJECTION_CODES,
    STATUS,
    VARIANT_FILES,
    all_keys,
    check_manifests,
    manifest,
    output_prefix,
    s3_event,
    sqs_event,
    tags,
    upload,
)


def test_every_bad_input_is_tagged_with_its_code_and_the_good_ones_in_the_batch_still_work(
    s3, bucket, handler, context
):
    cases = bad_cases()
    # Good images first, between and last, so a bad record can't stop the ones after it.
    goods = good_cases()
    ordered = [goods[0], *cases[: len(cases) // 2], goods[1], *cases[len(cases) // 2 :], goods[2]]
    uploads = [upload(s3, bucket, f"raw/corpus/{case.name}", case.data) for case in ordered]

    started = time.perf_counter()
    result = handler.lambda_handler(sqs_event(bucket, uploads), context)
    elapsed = time.perf_counter() - started

    assert result == {"batchItemFailures": []}  # bad images are final: nothing to retry
    assert elapsed < 20, f"the corpus took {elapsed:.1f} s"
    for case, obj in zip(ordered, uploads, strict=True):
        prefix = output_prefix(obj.key)
        if case.expected == "processed":
            assert tags(s3, bucket, obj.key) == {STATUS: "processed"}, case.name
            expected_keys = [prefix + "manifest.json"] + [prefix + f for f in VARIANT_FILES]
            assert all_keys(s3, bucket, prefix) == sorted(expected_keys), case.name
            record = manifest(s3, bucket, prefix)
            assert record["source"]["etag"] == obj.etag
            for variant in record["variants"]:
                image = decode(s3.get_object(Bucket=bucket, Key=variant["key"])["Body"].read())
                assert image.size == (variant["width"], variant["height"]), case.name
                assert image.mode in ("RGB", "RGBA", "L", "LA"), (case.name, image.mode)  # no CMYK / 16-bit out
        else:
            assert tags(s3, bucket, obj.key) == {STATUS: "failed", ERROR: case.expected}, case.name
            assert all_keys(s3, bucket, prefix) == [], case.name
    assert len(check_manifests(s3, bucket)) == sum(c.expected == "processed" for c in ordered)


def test_a_bad_input_in_a_direct_s3_notification_does_not_fail_the_invocation(s3, bucket, handler, context):
    good = upload(s3, bucket, "raw/direct/ok.jpg", photo(300, 200))
    bomb = upload(s3, bucket, "raw/direct/bomb.png", next(c.data for c in bad_cases() if c.name == "bomb.png"))
    result = handler.lambda_handler(s3_event(bucket, [bomb, good]), context)
    assert result["results"] == [
        {"key": bomb.key, "status": "failed", "error_code": "too_many_pixels"},
        {"key": good.key, "status": "processed", "error_code": None},
    ]


# -- property: mutated valid images ---------------------------------------------------------------

SEEDS = {
    "jpeg": photo(96, 64),
    "png": photo(64, 48, "PNG"),
    "webp": photo(80, 60, "WEBP"),
    "gif": photo(48, 48, "GIF"),
}


@st.composite
def mutated_images(draw):
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        if not data:
            break
        if op == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # overwrite a header field (sizes, depths, chunk lengths live in the first bytes)
            at = draw(st.integers(0, min(len(data), 48) - 1))
            data[at : at + 2] = draw(st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x00\x01"]))
    return kind, bytes(data)


@pytest.fixture(scope="module")
def fuzz_bucket(moto_server):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server)
    name = f"fuzz-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@settings(max_examples=120, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sample=mutated_images())
def test_mutated_images_are_processed_or_rejected_never_raised_hung_or_half_written(
    sample, s3, fuzz_bucket, handler, context
):
    kind, data = sample
    obj = upload(s3, fuzz_bucket, f"raw/fuzz/{uuid.uuid4().hex}.{kind}", data)
    started = time.perf_counter()
    result = handler.lambda_handler(s3_event(fuzz_bucket, [obj]), context)  # RetryLater would raise here
    assert time.perf_counter() - started < 5.0

    (outcome,) = result["results"]
    event(f"{kind}: {outcome['status']} {outcome['error_code'] or ''}")
    prefix = output_prefix(obj.key)
    if outcome["status"] == "processed":
        assert tags(s3, fuzz_bucket, obj.key) == {STATUS: "processed"}
        record = manifest(s3, fuzz_bucket, prefix)
        assert record["source"]["etag"] == obj.etag
        for variant in record["variants"]:  # the manifest never lists a missing or short variant
            assert s3.head_object(Bucket=fuzz_bucket, Key=variant["key"])["ContentLength"] == variant["bytes"]
    else:
        assert outcome["status"] == "failed" and outcome["error_code"] in REJECTION_CODES, outcome
        assert tags(s3, fuzz_bucket, obj.key) == {STATUS: "failed", ERROR: outcome["error_code"]}
        assert all_keys(s3, fuzz_bucket, prefix) == []
