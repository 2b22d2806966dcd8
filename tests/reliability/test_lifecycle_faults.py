"""The lifecycle under bad timing and odd servers, through the fault proxy in front of moto:
a stalled S3 call cut off by the time left, a rejection racing a newer upload, two names writing
one output prefix at once, a server that answers a missing key with a bare 404, and an upload
whose 10 tags leave no room for ours."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from image_pipeline.processor import ImageProcessor
from image_pipeline.service import ImageService, ObjectRef
from image_pipeline.settings import Settings
from image_pipeline.storage.s3 import S3Connection
from tests.images import photo
from tests.reliability.faultproxy import Fault
from tests.reliability.support import (
    ERROR,
    STATUS,
    VARIANT_FILES,
    Uploaded,
    all_keys,
    check_manifests,
    manifest,
    metrics_printed,
    s3_event,
    sqs_event,
    tags,
    upload,
)
from tests.reliability.test_duplicates_and_races import run_concurrently
from tests.reliability.test_timeouts import ScriptedClock

# -- a stalled S3 call ----------------------------------------------------------------------------


def test_a_stalled_read_is_cut_off_by_the_time_left_and_only_its_message_comes_back(
    s3, bucket, handler, proxy, settings_env, handler_logs
):
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)  # TIME_RESERVE_MS: the 10 000 ms default
    objs = [upload(s3, bucket, f"raw/stall/{i}.jpg", photo(320, 240)) for i in range(3)]
    proxy.add(Fault.delay(12.0), method="GET", path=f"^/{bucket}/raw/stall/1.jpg$")  # answers far too late
    clock = ScriptedClock(14_000)  # 14 s left for every record: 4 s for each one's S3 work

    started = time.monotonic()
    result = handler.lambda_handler(sqs_event(bucket, objs), clock)
    elapsed = time.monotonic() - started

    assert result == {"batchItemFailures": [{"itemIdentifier": "msg-1"}]}  # the finished ones are not
    assert elapsed < 12.0  # the stalled GET did not hold the invocation (Lambda would have killed it)
    assert all_keys(s3, bucket, "processed/stall/1/") == [] and tags(s3, bucket, objs[1].key) == {}
    assert [tags(s3, bucket, o.key) for o in (objs[0], objs[2])] == [{STATUS: "processed"}] * 2
    (retried,) = [line for line in handler_logs.refresh() if line["message"] == "object will be retried"]
    assert retried["key"] == objs[1].key and retried["error_code"] == "out_of_time"

    proxy.clear()
    assert handler.lambda_handler(sqs_event(bucket, objs[1:2], first_id=1), ScriptedClock(60_000)) == {
        "batchItemFailures": []
    }
    assert len(check_manifests(s3, bucket)) == 3


def test_a_stalled_variant_write_leaves_nothing_that_claims_to_be_done(s3, bucket, handler, proxy, settings_env):
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)
    obj = upload(s3, bucket, "raw/stallw/a.jpg", photo(320, 240))
    proxy.add(Fault.delay(12.0), method="PUT", path="/processed/stallw/a/large.jpg$")

    with pytest.raises(handler.RetryLater, match=r"stallw/a\.jpg"):
        handler.lambda_handler(s3_event(bucket, [obj]), ScriptedClock(13_000))

    assert "processed/stallw/a/manifest.json" not in all_keys(s3, bucket)
    assert tags(s3, bucket, obj.key) == {}


# -- a rejection that is stale or racing a newer upload -------------------------------------------


def test_a_late_event_saying_too_large_does_not_fail_the_newer_upload(s3, bucket, handler, context, settings_env):
    settings_env(MAX_INPUT_BYTES="200000")
    now = upload(s3, bucket, "raw/hint/a.jpg", photo(320, 240))  # replaced a 5 MB upload
    late = Uploaded(now.key, "0" * 32, 5_000_000)  # the event of that older, too large upload

    result = handler.lambda_handler(s3_event(bucket, [late]), context)

    assert result["results"] == [{"key": now.key, "status": "processed", "error_code": None}]
    assert tags(s3, bucket, now.key) == {STATUS: "processed"}


def test_a_rejection_is_not_tagged_on_an_upload_that_replaced_the_one_judged(
    s3, bucket, handler, context, proxy, settings_env
):
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)
    bad = upload(s3, bucket, "raw/swap/a.jpg", b"\xff\xd8\xff\xe0 this is no JPEG")
    # The manifest GET (sent with the raw GET) is held back; meanwhile a good picture replaces the
    # bad one, so the bad version is judged after S3 already holds the good one.
    proxy.add(Fault.delay(3.0), method="GET", path="/processed/swap/a/manifest.json$")
    replaced = threading.Event()

    def replace_after_the_raw_get() -> None:
        deadline = time.monotonic() + 30
        while not proxy.requests("GET", f"^/{bucket}/raw/swap/a.jpg$") and time.monotonic() < deadline:
            time.sleep(0.01)
        s3.put_object(Bucket=bucket, Key=bad.key, Body=photo(320, 240))
        replaced.set()

    worker = threading.Thread(target=replace_after_the_raw_get)
    worker.start()
    result = handler.lambda_handler(s3_event(bucket, [bad]), context)
    worker.join()

    assert replaced.is_set()
    assert result["results"] == [{"key": bad.key, "status": "processed", "error_code": None}]
    assert tags(s3, bucket, bad.key) == {STATUS: "processed"}  # never failed/corrupt_image
    (record,) = check_manifests(s3, bucket)
    assert record["source"]["etag"] == s3.head_object(Bucket=bucket, Key=bad.key)["ETag"].strip('"')


# -- two names, one output prefix -----------------------------------------------------------------


def test_two_names_for_one_prefix_at_once_leave_one_owner_and_consistent_outputs(s3, bucket, proxy):
    jpg = upload(s3, bucket, "raw/twin/a.jpg", photo(640, 480))
    png = upload(s3, bucket, "raw/twin/a.png", photo(480, 640, "PNG"))
    # Every output write is slow, so both pass the owner check before either has written (2 s: a
    # runtime that starts late on a loaded machine still reads before the other's manifest lands).
    proxy.add(Fault.delay(2.0), method="PUT", path="/processed/", times=None)

    statuses = run_concurrently(proxy.url, [ObjectRef(bucket, jpg.key), ObjectRef(bucket, png.key)])

    assert sorted(statuses) == ["failed", "processed"]
    winner, loser = (jpg, png) if statuses[0] == "processed" else (png, jpg)
    (record,) = check_manifests(s3, bucket)  # every variant's bytes and source-etag match the manifest
    assert (record["source"]["key"], record["source"]["etag"]) == (winner.key, winner.etag)
    assert all_keys(s3, bucket, "processed/") == sorted(
        ["processed/twin/a/manifest.json"] + [f"processed/twin/a/{f}" for f in VARIANT_FILES]
    )
    assert tags(s3, bucket, winner.key) == {STATUS: "processed"}
    assert tags(s3, bucket, loser.key) == {STATUS: "failed", ERROR: "name_conflict"}
    manifest_puts = proxy.requests("PUT", "/processed/twin/a/manifest.json$")
    assert [p.status for p in manifest_puts].count(412) == 1  # the race really happened


# -- a bare 404 -----------------------------------------------------------------------------------


def test_a_bare_404_for_a_missing_manifest_still_means_not_processed(s3, bucket, handler, context, proxy, settings_env):
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)
    obj = upload(s3, bucket, "raw/bare/a.jpg", photo(320, 240))
    proxy.add(Fault.bare_404(), method="GET", path="/processed/.*manifest.json$", times=None)

    result = handler.lambda_handler(s3_event(bucket, [obj]), context)
    assert result["results"] == [{"key": obj.key, "status": "processed", "error_code": None}]
    assert proxy.injected("bare_404") == 1

    service = ImageService(ImageProcessor(Settings.from_env({}).variants))

    async def ask():
        connection = await S3Connection.open(endpoint_url=proxy.url, max_attempts=1)
        try:
            store = connection.store(bucket)
            state = await service.state(store, "raw/bare/other.jpg", "0" * 32)
            removed = await service.remove(store, "raw/bare/other.jpg")
            return state, removed.status
        finally:
            await connection.close()

    assert asyncio.run(ask()) == ("missing", "ignored")
    assert proxy.injected("bare_404") == 3


# -- no room for our tags -------------------------------------------------------------------------


def test_an_upload_with_ten_tags_is_processed_and_the_missing_status_is_reported(
    s3, bucket, handler, context, handler_logs, capsys
):
    own = {f"team-{i}": str(i) for i in range(10)}
    etag = s3.put_object(
        Bucket=bucket, Key="raw/full/a.jpg", Body=photo(320, 240), Tagging="&".join(f"{k}={v}" for k, v in own.items())
    )["ETag"].strip('"')
    capsys.readouterr()

    result = handler.lambda_handler(s3_event(bucket, [Uploaded("raw/full/a.jpg", etag, 0)]), context)

    assert result["results"][0]["status"] == "processed"
    assert tags(s3, bucket, "raw/full/a.jpg") == own  # the uploader's tags stay; S3 allows no 11th
    assert manifest(s3, bucket, "processed/full/a/")["source"]["etag"] == etag  # findable by its manifest
    (warning,) = [line for line in handler_logs.refresh() if line["message"].startswith("no room for the pipeline")]
    assert warning["level"] == "WARNING" and warning["tags_dropped"] == [STATUS] and warning["key"] == "raw/full/a.jpg"
    assert metrics_printed(capsys).get("TagsFull") == [1.0]
