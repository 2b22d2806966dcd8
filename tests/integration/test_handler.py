"""The real handler against a real S3 API (moto server): every event shape, batches, failures,
tag vs delete, duplicates, recursion guard, manifest and headers."""

from __future__ import annotations

import json

import pytest

from image_pipeline.errors import ConfigError
from image_pipeline.settings import Settings
from tests.conftest import EVENTS, load_event
from tests.images import decode, photo

EXPECTED = {"thumbnail": ("webp", 150, 150), "medium": ("webp", 800, 533), "large": ("jpeg", 1920, 1280)}


def upload(s3, bucket: str, key: str, data: bytes) -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')


def tags(s3, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def keys_under(s3, bucket: str, prefix: str = "processed/") -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def manifest(s3, bucket: str, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())


def test_s3_put_writes_every_variant_then_the_manifest_then_tags_the_raw_object(s3, bucket, handler, context):
    key = "raw/albums/2026/beach.jpg"
    etag = upload(s3, bucket, key, photo(3000, 2000))
    result = handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key], etag=etag), context)

    assert result["results"] == [{"key": key, "status": "processed", "error_code": None}]
    prefix = "processed/albums/2026/beach/"
    assert keys_under(s3, bucket) == [
        prefix + "large.jpg",
        prefix + "manifest.json",
        prefix + "medium.webp",
        prefix + "thumbnail.webp",
    ]
    for name, (fmt, width, height) in EXPECTED.items():
        ext = "jpg" if fmt == "jpeg" else fmt
        obj = s3.get_object(Bucket=bucket, Key=f"{prefix}{name}.{ext}")
        assert obj["ContentType"] == f"image/{fmt}"
        assert obj["CacheControl"] == "public, max-age=31536000"
        assert obj["Metadata"] == {"width": str(width), "height": str(height), "variant": name, "source-etag": etag}
        image = decode(obj["Body"].read())
        assert image.format == fmt.upper() and image.size == (width, height)

    record = manifest(s3, bucket, prefix)
    assert record["source"]["key"] == key and record["source"]["etag"] == etag
    assert (record["source"]["width"], record["source"]["height"]) == (3000, 2000)
    assert [(v["name"], v["width"], v["height"], v["content_type"]) for v in record["variants"]] == [
        (n, w, h, f"image/{f}") for n, (f, w, h) in EXPECTED.items()
    ]
    for v in record["variants"]:
        assert s3.head_object(Bucket=bucket, Key=v["key"])["ContentLength"] == v["bytes"]
    assert record["processing_ms"] > 0 and record["total_ms"] >= record["processing_ms"]
    assert record["placeholder"]["blurhash"] and record["placeholder"]["dominant_color"].startswith("#")
    assert s3.head_object(Bucket=bucket, Key=prefix + "manifest.json")["CacheControl"] == "no-cache"
    assert tags(s3, bucket, key) == {"image-pipeline-status": "processed"}


@pytest.mark.parametrize(
    "key",
    ["raw/summer holiday/café + friends.jpg", "raw/a+b/100%.jpg", "raw/日本/写真 1.jpeg", "raw/no extension"],
)
def test_url_encoded_keys_with_spaces_unicode_and_plus(s3, bucket, handler, context, key):
    upload(s3, bucket, key, photo(400, 300))
    event = load_event("s3-put-encoded-key.json", bucket=bucket, keys=[key])
    assert "+" in json.dumps(event) or "%" in json.dumps(event)  # the event really is encoded
    handler.lambda_handler(event, context)
    stem = key.removeprefix("raw/").rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key.removeprefix("raw/")
    assert keys_under(s3, bucket, f"processed/{stem}/")[-1].endswith("thumbnail.webp")
    assert tags(s3, bucket, key)["image-pipeline-status"] == "processed"


def test_eventbridge_object_created(s3, bucket, handler, context):
    key = "raw/eb/photo.png"
    upload(s3, bucket, key, photo(500, 500, "PNG"))
    handler.lambda_handler(load_event("eventbridge-object-created.json", bucket=bucket, keys=[key]), context)
    assert manifest(s3, bucket, "processed/eb/photo/")["source"]["type"] == "png"


def test_sqs_batch_with_a_bad_record_reports_nothing_and_processes_the_rest(s3, bucket, handler, context):
    keys = ["raw/q/1.jpg", "raw/q/not-an-image.jpg", "raw/q/3.webp"]
    upload(s3, bucket, keys[0], photo(300, 200))
    upload(s3, bucket, keys[1], b"<html>definitely not a jpeg</html>")
    upload(s3, bucket, keys[2], photo(300, 200, "WEBP"))
    result = handler.lambda_handler(load_event("sqs-s3.json", bucket=bucket, keys=keys), context)

    assert result == {"batchItemFailures": []}  # a bad image is final: retrying cannot fix it
    assert tags(s3, bucket, keys[1]) == {"image-pipeline-status": "failed", "image-pipeline-error": "unsupported_type"}
    assert keys_under(s3, bucket, "processed/q/not-an-image/") == []
    for key in (keys[0], keys[2]):
        assert tags(s3, bucket, key) == {"image-pipeline-status": "processed"}


UNREACHABLE = "http://127.0.0.1:9"  # connection refused: a network failure, worth a retry


def test_sqs_storage_failure_becomes_a_batch_item_failure(s3, bucket, handler, context, settings_env):
    settings_env(AWS_ENDPOINT_URL_S3=UNREACHABLE)
    event = load_event("sqs-s3.json", bucket=bucket, keys=["raw/unreachable.jpg"])
    result = handler.lambda_handler(event, context)
    assert result == {"batchItemFailures": [{"itemIdentifier": "message-0"}]}


def test_sqs_permanent_storage_failure_is_not_retried(s3, bucket, handler, context):
    upload(s3, bucket, "raw/ok.jpg", photo(200, 200))
    event = load_event("sqs-s3.json", bucket=bucket, keys=["raw/ok.jpg", "raw/missing-bucket.jpg"])
    body = json.loads(event["Records"][1]["body"])
    body["Records"][0]["s3"]["bucket"]["name"] = "no-such-bucket-anywhere"
    event["Records"][1]["body"] = json.dumps(body)
    result = handler.lambda_handler(event, context)
    assert result == {"batchItemFailures": []}  # NoSuchBucket stays so: redelivering cannot help
    assert tags(s3, bucket, "raw/ok.jpg")["image-pipeline-status"] == "processed"


def test_direct_invocation_raises_on_storage_failure_so_lambda_retries(s3, bucket, handler, context, settings_env):
    settings_env(AWS_ENDPOINT_URL_S3=UNREACHABLE)
    event = load_event("s3-put.json", bucket=bucket, keys=["raw/x.jpg"])
    with pytest.raises(handler.RetryLater):
        handler.lambda_handler(event, context)


def test_direct_invocation_does_not_retry_a_missing_bucket(s3, handler, context):
    event = load_event("s3-put.json", bucket="no-such-bucket-anywhere", keys=["raw/x.jpg"])
    result = handler.lambda_handler(event, context)
    assert result["results"] == [{"key": "raw/x.jpg", "status": "failed", "error_code": "storage_denied"}]


def test_a_multi_record_notification_processes_every_record(s3, bucket, handler, context):
    keys = ["raw/m/a.jpg", "raw/m/empty.jpg", "raw/m/c.gif"]
    upload(s3, bucket, keys[0], photo(300, 300))
    upload(s3, bucket, keys[1], b"")
    upload(s3, bucket, keys[2], photo(300, 300, "GIF"))
    result = handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=keys), context)
    assert [r["status"] for r in result["results"]] == ["processed", "failed", "processed"]
    assert tags(s3, bucket, keys[1])["image-pipeline-error"] == "empty_file"


def test_delete_disposition_removes_the_raw_object_after_the_manifest(s3, bucket, handler, settings_env, context):
    settings_env(RAW_DISPOSITION="delete")
    key = "raw/del/photo.jpg"
    upload(s3, bucket, key, photo(400, 300))
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    assert keys_under(s3, bucket, "raw/") == []
    assert "processed/del/photo/manifest.json" in keys_under(s3, bucket)


def test_failed_images_are_kept_even_in_delete_mode(s3, bucket, handler, settings_env, context):
    settings_env(RAW_DISPOSITION="delete")
    upload(s3, bucket, "raw/del/bad.jpg", b"GIF89a-not-really")
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=["raw/del/bad.jpg"]), context)
    assert keys_under(s3, bucket, "raw/") == ["raw/del/bad.jpg"]
    assert tags(s3, bucket, "raw/del/bad.jpg")["image-pipeline-error"] == "corrupt_image"


def test_duplicate_delivery_does_no_image_work(s3, bucket, handler, context):
    key = "raw/dup/photo.jpg"
    etag = upload(s3, bucket, key, photo(800, 600))
    event = load_event("s3-put.json", bucket=bucket, keys=[key], etag=etag)
    handler.lambda_handler(event, context)
    first = s3.head_object(Bucket=bucket, Key="processed/dup/photo/manifest.json")["LastModified"]
    result = handler.lambda_handler(event, context)
    assert result["results"][0]["status"] == "skipped"
    assert s3.head_object(Bucket=bucket, Key="processed/dup/photo/manifest.json")["LastModified"] == first


def test_overwritten_raw_key_is_reprocessed_and_the_manifest_follows(s3, bucket, handler, context):
    key = "raw/over/photo.jpg"
    upload(s3, bucket, key, photo(800, 600))
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    new_etag = upload(s3, bucket, key, photo(600, 800))
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key], etag=new_etag), context)
    record = manifest(s3, bucket, "processed/over/photo/")
    assert record["source"]["etag"] == new_etag
    large = decode(s3.get_object(Bucket=bucket, Key="processed/over/photo/large.jpg")["Body"].read())
    assert large.size == (600, 800)


@pytest.mark.parametrize("key", ["processed/x/photo/large.jpg", "elsewhere/photo.jpg", "raw/"])
def test_objects_outside_the_raw_prefix_are_ignored(s3, bucket, handler, context, key):
    upload(s3, bucket, key, photo(200, 200))
    result = handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    assert result["results"][0]["status"] == "ignored"
    assert keys_under(s3, bucket) == (["processed/x/photo/large.jpg"] if key.startswith("processed/") else [])
    assert tags(s3, bucket, key) == {}


def test_user_tags_on_the_raw_object_are_kept(s3, bucket, handler, context):
    key = "raw/tags/photo.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=photo(200, 200), Tagging="owner=alice")
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    assert tags(s3, bucket, key) == {"owner": "alice", "image-pipeline-status": "processed"}


def test_out_of_time_records_are_left_for_a_retry(s3, bucket, handler, context):
    key = "raw/late/photo.jpg"
    upload(s3, bucket, key, photo(200, 200))
    context.get_remaining_time_in_millis = lambda: 500
    with pytest.raises(handler.RetryLater):
        handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    assert tags(s3, bucket, key) == {} and keys_under(s3, bucket) == []


def test_logs_are_structured_json_with_the_key_and_error_code(s3, bucket, handler, context):
    import io

    upload(s3, bucket, "raw/log/bad.jpg", b"not an image")
    stream = io.StringIO()
    previous = handler.logger.registered_handler.setStream(stream)
    try:
        handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=["raw/log/bad.jpg"]), context)
    finally:
        handler.logger.registered_handler.setStream(previous)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (rejected,) = [line for line in lines if line["message"] == "image rejected"]
    assert rejected["key"] == "raw/log/bad.jpg" and rejected["error_code"] == "unsupported_type"
    assert rejected["level"] == "WARNING" and rejected["function_request_id"] == context.aws_request_id


@pytest.mark.parametrize(
    "env,message",
    [
        ({"VARIANTS": "thumb:150"}, "VARIANTS"),
        ({"VARIANTS": "thumb:150x150:bmp"}, "unknown option 'bmp'"),
        ({"RAW_DISPOSITION": "archive"}, "RAW_DISPOSITION"),
        ({"MAX_PIXELS": "lots"}, "MAX_PIXELS='lots' is not an integer"),
        ({"RAW_PREFIX": "processed/", "PROCESSED_PREFIX": "processed/"}, "overlap"),
        ({"ALLOWED_TYPES": "jpeg,svg"}, "ALLOWED_TYPES"),
        ({"CACHE_CONTROL": ""}, "CACHE_CONTROL"),
        ({"CACHE_CONTROL": "max-age=60 \u2014 immutable"}, "printable ASCII"),
        ({"PROCESS_CONCURRENCY": "0"}, "PROCESS_CONCURRENCY=0 must be at least 1"),
        ({"PROCESS_WAIT_MS": "soon"}, "PROCESS_WAIT_MS='soon' is not an integer"),
    ],
)
def test_bad_configuration_fails_at_cold_start_with_a_clear_message(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_cold_start_with_bad_configuration_names_every_problem():
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAW_DISPOSITION": "archive", "MAX_PIXELS": "-1"}
    done = subprocess.run(
        [sys.executable, "-c", "import image_pipeline.handler"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "RAW_DISPOSITION='archive'" in done.stderr and "MAX_PIXELS=-1 must be at least 1" in done.stderr


def test_a_fixed_upload_loses_its_old_error_tag(s3, bucket, handler, context):
    key = "raw/fix/photo.jpg"
    upload(s3, bucket, key, b"not yet an image")
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key]), context)
    assert tags(s3, bucket, key)["image-pipeline-error"] == "unsupported_type"
    etag = upload(s3, bucket, key, photo(300, 200))
    s3.put_object_tagging(
        Bucket=bucket,
        Key=key,
        Tagging={
            "TagSet": [
                {"Key": "image-pipeline-status", "Value": "failed"},
                {"Key": "image-pipeline-error", "Value": "unsupported_type"},
            ]
        },
    )
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key], etag=etag), context)
    assert tags(s3, bucket, key) == {"image-pipeline-status": "processed"}


def test_a_record_from_the_failure_destination_can_be_replayed(s3, bucket, handler, context):
    key = "raw/dlq/photo.jpg"
    upload(s3, bucket, key, photo(300, 200))
    original = load_event("s3-put.json", bucket=bucket, keys=[key])
    destination_record = {
        "version": "1.0",
        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
        "requestPayload": original,
        "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
        "responsePayload": {"errorType": "RetryLater"},
    }
    result = handler.lambda_handler(destination_record, context)
    assert result["results"][0]["status"] == "processed"


@pytest.mark.parametrize("disposition", ["delete", "tag"])
def test_a_late_duplicate_of_an_older_upload_never_disposes_of_the_newer_one(
    s3, bucket, handler, settings_env, context, disposition
):
    settings_env(RAW_DISPOSITION=disposition)
    key = "raw/late/avatar.jpg"
    old_etag = upload(s3, bucket, key, photo(300, 200))
    old_event = load_event("s3-put.json", bucket=bucket, keys=[key], etag=old_etag)
    handler.lambda_handler(old_event, context)
    new_etag = upload(s3, bucket, key, photo(200, 300))  # replaced before its own event arrives

    result = handler.lambda_handler(old_event, context)  # S3 redelivers the old event

    assert result["results"][0]["status"] == "processed"  # the object as it is now is processed
    assert manifest(s3, bucket, "processed/late/avatar/")["source"]["etag"] == new_etag
    assert decode(s3.get_object(Bucket=bucket, Key="processed/late/avatar/large.jpg")["Body"].read()).size == (200, 300)
    new_event = load_event("s3-put.json", bucket=bucket, keys=[key], etag=new_etag)
    assert handler.lambda_handler(new_event, context)["results"][0]["status"] == "skipped"


def test_same_name_with_another_extension_does_not_overwrite_the_first_upload(s3, bucket, handler, context):
    upload(s3, bucket, "raw/trip/IMG_0001.jpg", photo(300, 200))
    upload(s3, bucket, "raw/trip/IMG_0001.png", photo(200, 300, "PNG"))
    event = load_event("s3-put.json", bucket=bucket, keys=["raw/trip/IMG_0001.jpg", "raw/trip/IMG_0001.png"])
    statuses = [r["status"] for r in handler.lambda_handler(event, context)["results"]]

    assert statuses == ["processed", "failed"]
    assert manifest(s3, bucket, "processed/trip/IMG_0001/")["source"]["key"] == "raw/trip/IMG_0001.jpg"
    assert tags(s3, bucket, "raw/trip/IMG_0001.png") == {
        "image-pipeline-status": "failed",
        "image-pipeline-error": "name_conflict",
    }


def test_a_replacement_with_another_extension_takes_over_once_the_first_is_gone(
    s3, bucket, handler, settings_env, context
):
    settings_env(RAW_DISPOSITION="delete")
    upload(s3, bucket, "raw/swap/photo.jpg", photo(300, 200))
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=["raw/swap/photo.jpg"]), context)
    upload(s3, bucket, "raw/swap/photo.png", photo(200, 300, "PNG"))
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=["raw/swap/photo.png"]), context)
    assert manifest(s3, bucket, "processed/swap/photo/")["source"]["key"] == "raw/swap/photo.png"


def test_an_upload_with_ten_tags_of_its_own_is_still_processed_and_keeps_them(s3, bucket, handler, context):
    own = "&".join(f"user-{i}={i}" for i in range(10))
    for key, data in (("raw/tagged/good.jpg", photo(200, 200)), ("raw/tagged/bad.jpg", b"not an image")):
        s3.put_object(Bucket=bucket, Key=key, Body=data, Tagging=own)
    event = load_event("s3-put.json", bucket=bucket, keys=["raw/tagged/good.jpg", "raw/tagged/bad.jpg"])
    result = handler.lambda_handler(event, context)  # no RetryLater: S3's tag limit is not a storage failure
    assert [r["status"] for r in result["results"]] == ["processed", "failed"]
    assert len(tags(s3, bucket, "raw/tagged/good.jpg")) == 10 and "processed/tagged/good/manifest.json" in keys_under(
        s3, bucket
    )


def _batch_operation_event(bucket: str, key: str) -> dict:
    from urllib.parse import quote_plus

    event = json.loads((EVENTS / "s3-batch-operation.json").read_text())
    event["tasks"][0].update(s3Key=quote_plus(key, safe="/"), s3BucketArn=f"arn:aws:s3:::{bucket}")
    return event


@pytest.mark.parametrize(
    "data,result_code,result_string",
    [(photo(400, 300), "Succeeded", "processed"), (b"not an image", "PermanentFailure", "unsupported_type")],
)
def test_s3_batch_operations_backfill_reports_a_result_per_task(
    s3, bucket, handler, context, data, result_code, result_string
):
    key = "raw/backfill/old photo.jpg"
    upload(s3, bucket, key, data)
    response = handler.lambda_handler(_batch_operation_event(bucket, key), context)
    assert response["invocationSchemaVersion"] == "1.0" and response["treatMissingKeysAs"] == "PermanentFailure"
    assert response["results"] == [
        {"taskId": "dGFza2lkZ29lc2hlcmUK", "resultCode": result_code, "resultString": result_string}
    ]
    assert tags(s3, bucket, key)["image-pipeline-status"] == ("processed" if result_code == "Succeeded" else "failed")


def test_s3_batch_operations_storage_failure_is_a_temporary_failure(s3, bucket, handler, context, settings_env):
    settings_env(AWS_ENDPOINT_URL_S3=UNREACHABLE)
    response = handler.lambda_handler(_batch_operation_event(bucket, "raw/x.jpg"), context)
    assert response["results"][0]["resultCode"] == "TemporaryFailure"
    assert response["results"][0]["resultString"] == "storage_error"


def test_s3_batch_operations_permanent_storage_failure_is_a_permanent_failure(s3, handler, context):
    response = handler.lambda_handler(_batch_operation_event("no-such-bucket-anywhere", "raw/x.jpg"), context)
    assert response["results"][0]["resultCode"] == "PermanentFailure"
    assert response["results"][0]["resultString"] == "storage_denied"


def test_allowed_types_accept_common_aliases():
    assert Settings.from_env({"ALLOWED_TYPES": "jpg, heic,tif"}).limits.allowed_types == {"jpeg", "heif", "tiff"}


def test_image_concurrency_defaults_to_the_cpus_and_the_wait_to_thirty_seconds():
    from image_pipeline.pool import cpu_count
    from image_pipeline.runtime import Runtime

    default = Settings.from_env({})
    assert default.process_concurrency is None and default.process_wait_ms == 30_000
    runtime = Runtime(default)
    assert runtime.service.pool.limit == cpu_count()
    runtime.close()
    chosen = Settings.from_env({"PROCESS_CONCURRENCY": "3", "PROCESS_WAIT_MS": "0"})
    assert (chosen.process_concurrency, chosen.process_wait_ms) == (3, 0)
