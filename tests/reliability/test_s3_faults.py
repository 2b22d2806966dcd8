"""S3 misbehaving, through a fault-injecting proxy between the real handler and the moto server.

Transient faults (503 SlowDown, a reset connection mid-upload, slow answers) are absorbed by
botocore's retries (standard mode, S3_MAX_ATTEMPTS) and the result is complete. A 503 on every
attempt leaves the raw object exactly as it was, writes no manifest, logs an error and reports the
object for a retry. A refusal (403 AccessDenied, NoSuchBucket, an archived object) is permanent:
never retried, no manifest, the raw object tagged `failed` / `storage_denied` when S3 allows it, an
error log and the StoragePermanentFailures metric; once the cause is fixed, a replay completes it.
"""

from __future__ import annotations

import pytest

from tests.images import photo
from tests.reliability.faultproxy import Fault
from tests.reliability.support import (
    ERROR,
    STATUS,
    VARIANT_FILES,
    all_keys,
    check_manifests,
    manifest,
    metrics_printed,
    output_prefix,
    s3_event,
    sqs_event,
    tags,
    upload,
)


def complete(s3, bucket: str, obj) -> bool:
    """Every variant and the manifest for this upload exist, and the raw object says processed."""
    prefix = output_prefix(obj.key)
    expected = sorted([prefix + "manifest.json"] + [prefix + f for f in VARIANT_FILES])
    return (
        all_keys(s3, bucket, prefix) == expected
        and manifest(s3, bucket, prefix)["source"]["etag"] == obj.etag
        and tags(s3, bucket, obj.key) == {STATUS: "processed"}
    )


@pytest.fixture
def via_proxy(proxy, settings_env):
    """The handler's runtime now talks to S3 through the proxy (S3_MAX_ATTEMPTS=2, from conftest)."""
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)
    return proxy


def test_transient_faults_are_retried_and_the_result_is_complete(s3, bucket, handler, context, via_proxy):
    obj = upload(s3, bucket, "raw/flaky/photo.jpg", photo(640, 480))
    base = f"^/{bucket}/"
    via_proxy.add(Fault.slow_down(), method="GET", path=base + "processed/.*manifest.json$")  # the skip check
    via_proxy.add(Fault.slow_down(), method="GET", path=base + "raw/")  # the one GET of the upload
    via_proxy.add(Fault.reset(), method="PUT", path=base + "processed/.*large.jpg")  # mid-upload
    via_proxy.add(Fault.slow_down(), method="PUT", path=base + "processed/.*thumbnail.webp")
    via_proxy.add(Fault.delay(0.3), method="PUT", path=base + "processed/.*medium.webp")
    via_proxy.add(Fault.slow_down(), method="PUT", path=base + "processed/.*manifest.json")
    via_proxy.add(Fault.slow_down(), method="PUT", path=base + r"raw/.*\?tagging")

    result = handler.lambda_handler(s3_event(bucket, [obj]), context)

    assert result["results"] == [{"key": obj.key, "status": "processed", "error_code": None}]
    assert via_proxy.injected("slow_down") == 5 and via_proxy.injected("reset") == 1
    assert via_proxy.injected("delay") == 1
    large = via_proxy.requests("PUT", r"large\.jpg$")
    assert [r.fault for r in large] == ["reset", None] and large[-1].status == 200  # retried after the reset
    assert complete(s3, bucket, obj)
    check_manifests(s3, bucket)


def retry_logs(handler_logs) -> list[dict]:
    return [line for line in handler_logs.refresh() if line["message"] == "object will be retried"]


def permanent_logs(handler_logs) -> list[dict]:
    return [line for line in handler_logs.refresh() if line.get("message") == "object failed permanently; not retried"]


def test_permanent_403_on_outputs_is_not_retried_and_says_so_on_the_raw_object(
    s3, bucket, handler, context, via_proxy, handler_logs, capsys
):
    obj = upload(s3, bucket, "raw/denied/photo.jpg", photo(640, 480))
    via_proxy.add(Fault.access_denied(), method="PUT", path=f"^/{bucket}/processed/", times=None)
    event = s3_event(bucket, [obj])

    result = handler.lambda_handler(event, context)  # no RetryLater: Lambda must not retry this

    assert result["results"] == [{"key": obj.key, "status": "failed", "error_code": "storage_denied"}]
    assert via_proxy.injected("access_denied") == len(VARIANT_FILES)  # 403 is final: not retried by botocore
    assert all_keys(s3, bucket, "processed/") == []
    assert tags(s3, bucket, obj.key) == {STATUS: "failed", ERROR: "storage_denied"}  # findable, replayable
    (logged,) = permanent_logs(handler_logs)
    assert logged["level"] == "ERROR" and logged["error_code"] == "storage_denied" and logged["key"] == obj.key
    assert "AccessDenied" in logged["error"] and retry_logs(handler_logs) == []
    printed = metrics_printed(capsys)
    assert printed.get("StoragePermanentFailures") == [1.0] and "ImagesRetried" not in printed

    via_proxy.clear()  # the permission is fixed; a replay (or a backfill) completes it
    assert handler.lambda_handler(event, context)["results"][0]["status"] == "processed"
    assert complete(s3, bucket, obj)  # and the error tag is gone


@pytest.mark.parametrize("code", ["NoSuchBucket", "InvalidObjectState", "KMS.DisabledException", "AccessDenied"])
def test_refusals_are_permanent_and_throttling_is_not(code):
    from botocore.exceptions import ClientError

    from image_pipeline.storage.s3 import classify

    def error(c: str) -> ClientError:
        return ClientError({"Error": {"Code": c, "Message": "x"}}, "GetObject")

    refused = classify(error(code), "GetObject", "s3://b/k")
    assert (refused.code, refused.permanent) == ("storage_denied", True)
    for transient in ("SlowDown", "InternalError", "503", "KMS.ThrottlingException", "RequestTimeout"):
        failure = classify(error(transient), "GetObject", "s3://b/k")
        assert (failure.code, failure.permanent) == ("storage_error", False), transient
    assert classify(error("404"), "GetObject", "s3://b/k").code == "not_found"  # a bare 404


def test_503_beyond_the_attempts_in_an_sqs_batch_fails_only_that_message(
    s3, bucket, handler, context, via_proxy, handler_logs
):
    objs = [upload(s3, bucket, f"raw/busy/{i}.jpg", photo(320, 240)) for i in range(3)]
    via_proxy.add(Fault.slow_down(), method="PUT", path=f"^/{bucket}/processed/busy/1/manifest.json$", times=None)
    event = sqs_event(bucket, objs)

    result = handler.lambda_handler(event, context)

    assert result == {"batchItemFailures": [{"itemIdentifier": "msg-1"}]}
    attempts = via_proxy.requests("PUT", "busy/1/manifest.json$")
    assert 2 <= len(attempts) <= 3 and all(a.status == 503 for a in attempts)  # retried, then given up (see below)
    assert complete(s3, bucket, objs[0]) and complete(s3, bucket, objs[2])
    # the variants may be there, but without a manifest nothing claims the upload is done
    assert "processed/busy/1/manifest.json" not in all_keys(s3, bucket)
    assert tags(s3, bucket, objs[1].key) == {}
    (logged,) = retry_logs(handler_logs)
    assert logged["key"] == objs[1].key and "SlowDown" in logged["error"]

    via_proxy.clear()
    result = handler.lambda_handler(event, context)  # SQS redelivers the failed message (here: the whole batch)
    assert result == {"batchItemFailures": []}
    assert all(complete(s3, bucket, obj) for obj in objs)
    check_manifests(s3, bucket)


def test_a_failure_after_the_manifest_is_finished_by_the_replay_without_image_work(
    s3, bucket, handler, context, via_proxy
):
    obj = upload(s3, bucket, "raw/tagfail/photo.jpg", photo(320, 240))
    via_proxy.add(Fault.slow_down(), method="PUT", path=r"raw/tagfail/photo.jpg\?tagging", times=None)
    with pytest.raises(handler.RetryLater):
        handler.lambda_handler(s3_event(bucket, [obj]), context)
    assert tags(s3, bucket, obj.key) == {}
    written = s3.head_object(Bucket=bucket, Key="processed/tagfail/photo/manifest.json")["LastModified"]

    via_proxy.clear()
    result = handler.lambda_handler(s3_event(bucket, [obj]), context)
    assert result["results"][0]["status"] == "skipped"  # manifest has this ETag: only the tag was missing
    assert tags(s3, bucket, obj.key) == {STATUS: "processed"}
    assert s3.head_object(Bucket=bucket, Key="processed/tagfail/photo/manifest.json")["LastModified"] == written
    assert len(via_proxy.requests("PUT", "processed/")) == len(VARIANT_FILES) + 1  # all from the first run


def test_a_denied_read_of_the_upload_is_not_redelivered_and_is_tagged(s3, bucket, handler, context, via_proxy):
    good = upload(s3, bucket, "raw/noread/ok.jpg", photo(320, 240))
    obj = upload(s3, bucket, "raw/noread/photo.jpg", photo(320, 240))
    via_proxy.add(Fault.access_denied(), method="GET", path=f"^/{bucket}/raw/noread/photo.jpg$", times=None)
    result = handler.lambda_handler(sqs_event(bucket, [good, obj]), context)
    assert result == {"batchItemFailures": []}  # redelivering cannot help: no trip round to the DLQ
    assert tags(s3, bucket, obj.key) == {STATUS: "failed", ERROR: "storage_denied"}
    assert all_keys(s3, bucket, "processed/noread/photo/") == []
    assert complete(s3, bucket, good)
    via_proxy.clear()
    assert handler.lambda_handler(sqs_event(bucket, [good, obj]), context) == {"batchItemFailures": []}
    assert complete(s3, bucket, obj)


def test_when_every_message_fails_each_one_is_reported_for_redelivery(s3, bucket, handler, context, via_proxy):
    """Even when *all* records fail, the response lists each one (no invocation error)."""
    obj = upload(s3, bucket, "raw/allfail/photo.jpg", photo(320, 240))
    via_proxy.add(Fault.slow_down(), method="GET", path=f"^/{bucket}/raw/allfail/", times=None)
    event = sqs_event(bucket, [obj])
    result = handler.lambda_handler(event, context)
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert tags(s3, bucket, obj.key) == {}


def test_s3_max_attempts_is_the_total_number_of_attempts(s3, bucket, handler, context, via_proxy):
    obj = upload(s3, bucket, "raw/attempts/photo.jpg", photo(64, 64))
    via_proxy.add(Fault.slow_down(), method="GET", path=f"^/{bucket}/raw/attempts/", times=None)
    with pytest.raises(handler.RetryLater):
        handler.lambda_handler(s3_event(bucket, [obj]), context)
    assert len(via_proxy.requests("GET", "raw/attempts/")) == handler.runtime.settings.s3_max_attempts == 2


def test_delete_mode_on_a_server_without_conditional_deletes(s3, bucket, handler, context, proxy, settings_env):
    """LocalStack answers a DELETE with If-Match 501 NotImplemented: the raw object is checked with
    a HEAD (still the version processed?) and deleted plainly; the record is not retried forever."""
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url, RAW_DISPOSITION="delete")
    proxy.add(Fault.not_implemented(), method="DELETE", header="If-Match", times=None)
    obj = upload(s3, bucket, "raw/nocond/photo.jpg", photo(640, 480))

    result = handler.lambda_handler(s3_event(bucket, [obj]), context)

    assert [r["status"] for r in result["results"]] == ["processed"]
    assert proxy.injected("not_implemented") == 1  # the conditional delete was refused, once
    assert all_keys(s3, bucket, "raw/") == []  # raw deleted
    prefix = output_prefix(obj.key)
    assert all_keys(s3, bucket, prefix) == sorted([prefix + "manifest.json"] + [prefix + f for f in VARIANT_FILES])
    assert manifest(s3, bucket, prefix)["source"]["etag"] == obj.etag


def test_without_conditional_deletes_a_replaced_upload_is_processed_not_deleted(
    s3, bucket, handler, context, proxy, settings_env
):
    """The raw object is replaced while its first version is processed: the fallback's HEAD sees
    the new ETag, so the new upload is not deleted with the old one's outputs; it is processed
    (the manifest records it), and only then deleted."""
    from tests.gated import GatedProcessor
    from tests.images import decode

    runtime = settings_env(AWS_ENDPOINT_URL_S3=proxy.url, RAW_DISPOSITION="delete")
    proxy.add(Fault.not_implemented(), method="DELETE", header="If-Match", times=None)
    gated = GatedProcessor.replacing(runtime.service)
    old = upload(s3, bucket, "raw/nocond/swap.jpg", photo(640, 480))

    import threading

    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(handler.lambda_handler(s3_event(bucket, [old]), context)))
    worker.start()
    assert gated.entered.wait(30)
    new = upload(s3, bucket, old.key, photo(1200, 300))  # replaced while the old one is processed
    gated.gate.set()
    worker.join(60)

    assert [r["status"] for r in outcome[0]["results"]] == ["processed"]
    assert proxy.injected("not_implemented") >= 2  # the old version's delete was refused, then the new one's
    prefix = output_prefix(old.key)
    record = manifest(s3, bucket, prefix)
    assert record["source"]["etag"] == new.etag != old.etag  # the outputs are the new upload's
    large = s3.get_object(Bucket=bucket, Key=prefix + "large.jpg")["Body"].read()
    assert decode(large).size == (1200, 300)
    assert all_keys(s3, bucket, "raw/") == []  # deleted once it was processed
