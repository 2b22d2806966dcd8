"""The Lambda entry point with MODERATION on: the runtime builds the same gate (a held image is
reported as held, publishes nothing, and the raw object is tagged), and an engine without a verdict
makes the record a retry, as a storage failure does."""

from __future__ import annotations

import json

import pytest

from image_pipeline.handler import RetryLater
from tests.conftest import load_event
from tests.images import photo


def test_the_lambda_handler_holds_with_a_threshold_of_zero(handler, settings_env, s3, bucket, context):
    settings_env(MODERATION="local", MODERATION_THRESHOLD="0")
    key = "raw/lambda/held.jpg"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=photo(400, 300))["ETag"].strip('"')
    result = handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key], etag=etag), context)
    assert result["results"] == [{"key": key, "status": "held", "error_code": None}]
    assert s3.list_objects_v2(Bucket=bucket, Prefix="processed/").get("KeyCount") == 0
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags["image-pipeline-status"] == "held"


def test_no_verdict_is_a_retry_for_the_lambda(handler, settings_env, s3, bucket, context, rekognition):
    rekognition.answer(500)
    settings_env(MODERATION="rekognition", AWS_ENDPOINT_URL_REKOGNITION=rekognition.url, S3_MAX_ATTEMPTS="1")
    key = "raw/lambda/unsure.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=photo(400, 300))
    with pytest.raises(RetryLater):  # an S3 notification: Lambda's own retries deliver it again
        handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    record = json.loads(s3.get_object(Bucket=bucket, Key="moderation/records/lambda/unsure.jpg.json")["Body"].read())
    assert record["state"] == "unavailable" and record["attempts"] == 1  # the try is counted
    assert s3.list_objects_v2(Bucket=bucket, Prefix="processed/").get("KeyCount") == 0
