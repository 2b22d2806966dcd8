"""An image's whole life against a real S3 API (moto server): judged current or stale against the
running configuration, processed again when stale, and removed with its raw object."""

from __future__ import annotations

import asyncio
import json

import pytest

from image_pipeline.processor import ImageProcessor
from image_pipeline.processor.fingerprint import OUTPUT_VERSION
from image_pipeline.service import ImageService, ObjectRef
from image_pipeline.settings import parse_variants
from image_pipeline.storage.s3 import S3Connection
from tests.conftest import load_event
from tests.images import photo

BASE = "thumbnail:150x150:cover:webp;medium:800x800:webp;large:1920x1920:jpeg"


def service(spec: str = BASE, disposition: str = "tag") -> ImageService:
    return ImageService(ImageProcessor(parse_variants(spec)), disposition=disposition)


def on_s3(moto_server, bucket, body):
    """Run `body(store)` against the bucket through the pipeline's own S3 store."""

    async def main():
        connection = await S3Connection.open(endpoint_url=moto_server)
        try:
            return await body(connection.store(bucket))
        finally:
            await connection.close()

    return asyncio.run(main())


def keys_under(s3, bucket: str, prefix: str = "processed/") -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def upload(s3, bucket: str, key: str, data: bytes) -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')


def manifest(s3, bucket: str, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())


# -- state ----------------------------------------------------------------------------------------


def test_state_follows_the_upload_and_the_configuration(s3, bucket, moto_server):
    etag = upload(s3, bucket, "raw/s/a.jpg", photo(320, 240))
    current, bigger = service(), service(BASE.replace("1920x1920", "2560x2560"))

    async def body(store):
        before = await current.state(store, "raw/s/a.jpg", etag)
        await current.handle(store, ObjectRef(bucket, "raw/s/a.jpg"))
        return (
            before,
            await current.state(store, "raw/s/a.jpg", etag),
            await current.state(store, "raw/s/a.jpg", f'"{etag}"'),  # as S3 spells it, quotes included
            await current.state(store, "raw/s/a.jpg", "0" * 32),  # another upload under the same key
            await bigger.state(store, "raw/s/a.jpg", etag),  # another configuration
            await current.state(store, "raw/s/a.png", etag),  # same prefix, another key's manifest
            await current.state(store, "elsewhere/a.jpg", etag),
        )

    assert on_s3(moto_server, bucket, body) == ("missing", "current", "current", "stale", "stale", "missing", "missing")
    recorded = manifest(s3, bucket, "processed/s/a/")["producer"]
    assert recorded["fingerprint"] == current.fingerprint and recorded["output_version"] == OUTPUT_VERSION


def test_a_manifest_without_a_fingerprint_is_stale(s3, bucket, moto_server):
    """Manifests written before fingerprints were recorded cannot say what made them."""
    etag = upload(s3, bucket, "raw/old/a.jpg", photo(320, 240))
    svc = service()

    async def body(store):
        await svc.handle(store, ObjectRef(bucket, "raw/old/a.jpg"))
        record = manifest(s3, bucket, "processed/old/a/")
        del record["producer"]
        s3.put_object(Bucket=bucket, Key="processed/old/a/manifest.json", Body=json.dumps(record).encode())
        return await svc.state(store, "raw/old/a.jpg", etag)

    assert on_s3(moto_server, bucket, body) == "stale"


# -- remove ---------------------------------------------------------------------------------------


def test_remove_deletes_every_output_and_the_raw_object_when_asked(s3, bucket, moto_server):
    upload(s3, bucket, "raw/r/a.jpg", photo(320, 240))
    svc = service()

    async def body(store):
        await svc.handle(store, ObjectRef(bucket, "raw/r/a.jpg"))
        assert len(keys_under(s3, bucket, "processed/r/a/")) == 4
        s3.put_object(Bucket=bucket, Key="processed/r/ab/manifest.json", Body=b"{}")  # a neighbour
        return await svc.remove(store, "raw/r/a.jpg", delete_raw=True)

    outcome = on_s3(moto_server, bucket, body)
    assert outcome.status == "removed"
    assert keys_under(s3, bucket, "raw/") == []
    assert keys_under(s3, bucket) == ["processed/r/ab/manifest.json"]


def test_remove_after_the_raw_object_was_deleted_by_someone_else(s3, bucket, moto_server):
    upload(s3, bucket, "raw/r/b.jpg", photo(320, 240))
    svc = service()

    async def body(store):
        await svc.handle(store, ObjectRef(bucket, "raw/r/b.jpg"))
        s3.delete_object(Bucket=bucket, Key="raw/r/b.jpg")
        first = await svc.remove(store, "raw/r/b.jpg")
        again = await svc.remove(store, "raw/r/b.jpg")  # the event delivered twice
        return first, again

    first, again = on_s3(moto_server, bucket, body)
    assert (first.status, again.status) == ("removed", "ignored")
    assert keys_under(s3, bucket) == []


def test_remove_keeps_outputs_that_belong_to_another_key_or_to_a_new_upload(s3, bucket, moto_server):
    upload(s3, bucket, "raw/r/c.jpg", photo(320, 240))
    svc = service()

    async def body(store):
        await svc.handle(store, ObjectRef(bucket, "raw/r/c.jpg"))
        other = await svc.remove(store, "raw/r/c.png", delete_raw=True)  # same prefix, not its outputs
        upload(s3, bucket, "raw/r/c.jpg", photo(330, 240))  # deleted and uploaded again before the event ran
        reuploaded = await svc.remove(store, "raw/r/c.jpg")
        return other, reuploaded

    other, reuploaded = on_s3(moto_server, bucket, body)
    assert (other.status, reuploaded.status) == ("ignored", "ignored")
    assert "belong to 'raw/r/c.jpg'" in other.reason
    assert len(keys_under(s3, bucket, "processed/r/c/")) == 4
    assert keys_under(s3, bucket, "raw/") == ["raw/r/c.jpg"]


def test_in_delete_mode_a_raw_object_disappearing_never_removes_outputs(s3, bucket, moto_server):
    """The pipeline's own (conditional) delete of a processed upload sends ObjectRemoved too."""
    upload(s3, bucket, "raw/d/a.jpg", photo(320, 240))
    svc = service(disposition="delete")

    async def body(store):
        processed = await svc.handle(store, ObjectRef(bucket, "raw/d/a.jpg"))
        assert processed.status == "processed" and keys_under(s3, bucket, "raw/") == []
        event = await svc.remove(store, "raw/d/a.jpg")  # what the ObjectRemoved event asks
        api = await svc.remove(store, "raw/d/a.jpg", delete_raw=True)  # an explicit delete still removes
        return event, api

    event, api = on_s3(moto_server, bucket, body)
    assert event.status == "ignored" and api.status == "removed"
    assert keys_under(s3, bucket) == []


def test_remove_finds_outputs_of_every_possible_format(s3, bucket, moto_server):
    """A variant that keeps the source's format: the manifest lists the one written, and the
    configured variants' other extensions are removed too."""
    upload(s3, bucket, "raw/f/a.png", photo(320, 240, fmt="PNG"))
    svc = service("medium:800x800")

    async def body(store):
        await svc.handle(store, ObjectRef(bucket, "raw/f/a.png"))
        s3.put_object(Bucket=bucket, Key="processed/f/a/medium.gif", Body=b"stray")
        return await svc.remove(store, "raw/f/a.png", delete_raw=True)

    assert on_s3(moto_server, bucket, body).status == "removed"
    assert keys_under(s3, bucket) == []


# -- a changed configuration ----------------------------------------------------------------------


def test_a_changed_configuration_processes_again_and_drops_variants_no_longer_configured(s3, bucket, moto_server):
    etag = upload(s3, bucket, "raw/c/a.jpg", photo(2600, 1800))
    before, after = service(), service("thumbnail:150x150:cover:webp;large:2560x2560:jpeg;avif:600x600:avif")

    async def body(store):
        first = await before.handle(store, ObjectRef(bucket, "raw/c/a.jpg", etag))
        replay = await before.handle(store, ObjectRef(bucket, "raw/c/a.jpg", etag))
        written = s3.head_object(Bucket=bucket, Key="processed/c/a/manifest.json")["LastModified"]
        changed = await after.handle(store, ObjectRef(bucket, "raw/c/a.jpg", etag))
        replay_after = await after.handle(store, ObjectRef(bucket, "raw/c/a.jpg", etag))
        return first, replay, written, changed, replay_after

    first, replay, written, changed, replay_after = on_s3(moto_server, bucket, body)
    assert (first.status, replay.status, changed.status, replay_after.status) == (
        "processed",
        "skipped",
        "processed",
        "skipped",
    )
    assert replay.processing_ms == 0 and replay_after.processing_ms == 0  # no image work
    assert keys_under(s3, bucket) == [
        "processed/c/a/avif.avif",
        "processed/c/a/large.jpg",
        "processed/c/a/manifest.json",
        "processed/c/a/thumbnail.webp",
    ]  # medium.webp, no longer configured, is gone
    record = manifest(s3, bucket, "processed/c/a/")
    assert record["producer"]["fingerprint"] == after.fingerprint
    assert [(v["name"], v["width"]) for v in record["variants"]] == [("thumbnail", 150), ("large", 2560), ("avif", 600)]
    assert s3.head_object(Bucket=bucket, Key="processed/c/a/manifest.json")["LastModified"] >= written


# -- ObjectRemoved events through the handler ----------------------------------------------------


def _process(handler, context, s3, bucket, key: str, width: int = 320) -> str:
    etag = upload(s3, bucket, key, photo(width, 240))
    result = handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=[key], etag=etag), context)
    assert result["results"][0]["status"] == "processed"
    return etag


@pytest.mark.parametrize("event_file", ["s3-delete.json", "eventbridge-object-deleted.json"])
def test_deleting_a_raw_upload_deletes_its_outputs(s3, bucket, handler, context, event_file):
    _process(handler, context, s3, bucket, "raw/gone/a b.jpg")
    _process(handler, context, s3, bucket, "raw/gone/other.jpg")
    s3.delete_object(Bucket=bucket, Key="raw/gone/a b.jpg")

    result = handler.lambda_handler(load_event(event_file, bucket=bucket, keys=["raw/gone/a b.jpg"]), context)

    assert result["results"] == [{"key": "raw/gone/a b.jpg", "status": "removed", "error_code": None}]
    assert keys_under(s3, bucket, "processed/gone/a b/") == []
    assert len(keys_under(s3, bucket, "processed/gone/other/")) == 4  # nothing else touched


def test_a_removal_through_sqs_deletes_the_outputs(s3, bucket, handler, context):
    _process(handler, context, s3, bucket, "raw/q/a.jpg")
    s3.delete_object(Bucket=bucket, Key="raw/q/a.jpg")
    event = load_event("sqs-s3.json", bucket=bucket, keys=["raw/q/a.jpg"])
    body = json.loads(event["Records"][0]["body"])
    body["Records"][0]["eventName"] = "ObjectRemoved:DeleteMarkerCreated"
    event["Records"][0]["body"] = json.dumps(body)
    assert handler.lambda_handler(event, context) == {"batchItemFailures": []}
    assert keys_under(s3, bucket, "processed/q/") == []


def test_a_lifecycle_expiration_keeps_the_outputs(s3, bucket, handler, context):
    """RawRetentionDays expires processed raw objects on purpose: their outputs are the product."""
    _process(handler, context, s3, bucket, "raw/old/a.jpg")
    s3.delete_object(Bucket=bucket, Key="raw/old/a.jpg")
    event = load_event("eventbridge-object-deleted.json", bucket=bucket, keys=["raw/old/a.jpg"])
    event["detail"]["reason"] = "Lifecycle Expiration"
    assert handler.lambda_handler(event, context) == {"results": []}
    notification = load_event("s3-delete.json", bucket=bucket, keys=["raw/old/a.jpg"])
    notification["Records"][0]["eventName"] = "LifecycleExpiration:Delete"  # if someone subscribes to it
    assert handler.lambda_handler(notification, context) == {"results": []}
    assert len(keys_under(s3, bucket, "processed/old/a/")) == 4


def test_in_delete_mode_the_pipelines_own_delete_keeps_the_outputs(s3, bucket, handler, context, settings_env):
    settings_env(RAW_DISPOSITION="delete")
    etag = _process(handler, context, s3, bucket, "raw/own/a.jpg")
    assert keys_under(s3, bucket, "raw/") == []  # deleted by the pipeline (If-Match on that ETag)

    # ... which S3 announces as an ObjectRemoved event for the same key
    result = handler.lambda_handler(load_event("s3-delete.json", bucket=bucket, keys=["raw/own/a.jpg"]), context)

    assert result["results"][0]["status"] == "ignored"
    assert len(keys_under(s3, bucket, "processed/own/a/")) == 4
    assert manifest(s3, bucket, "processed/own/a/")["source"]["etag"] == etag


def test_a_removal_event_for_a_key_uploaded_again_keeps_the_new_outputs(s3, bucket, handler, context):
    _process(handler, context, s3, bucket, "raw/again/a.jpg")
    s3.delete_object(Bucket=bucket, Key="raw/again/a.jpg")
    etag = _process(handler, context, s3, bucket, "raw/again/a.jpg", 330)  # re-uploaded, processed first
    result = handler.lambda_handler(load_event("s3-delete.json", bucket=bucket, keys=["raw/again/a.jpg"]), context)
    assert result["results"][0]["status"] == "ignored"
    assert manifest(s3, bucket, "processed/again/a/")["source"]["etag"] == etag
    assert len(keys_under(s3, bucket, "processed/again/a/")) == 4


def _batch_task(bucket: str, key: str) -> dict:
    from urllib.parse import quote_plus

    from tests.conftest import EVENTS

    event = json.loads((EVENTS / "s3-batch-operation.json").read_text())
    event["tasks"][0].update(s3Key=quote_plus(key, safe="/"), s3BucketArn=f"arn:aws:s3:::{bucket}")
    return event


def test_a_replay_or_batch_task_after_a_variants_change_processes_again(s3, bucket, handler, context, settings_env):
    key = "raw/cfg/a.jpg"
    etag = _process(handler, context, s3, bucket, key)
    event = load_event("s3-put.json", bucket=bucket, keys=[key], etag=etag)
    assert handler.lambda_handler(event, context)["results"][0]["status"] == "skipped"  # same config: no work

    settings_env(VARIANTS="thumbnail:150x150:cover:webp;large:2560x2560:jpeg;small:400x400:avif")
    assert handler.lambda_handler(event, context)["results"][0]["status"] == "processed"
    assert keys_under(s3, bucket, "processed/cfg/a/") == [
        "processed/cfg/a/large.jpg",
        "processed/cfg/a/manifest.json",
        "processed/cfg/a/small.avif",
        "processed/cfg/a/thumbnail.webp",
    ]  # medium.webp is no longer configured: deleted once the new manifest was written

    settings_env(VARIANTS="thumbnail:150x150:cover:webp;large:2560x2560:jpeg")  # a backfill after another change
    response = handler.lambda_handler(_batch_task(bucket, key), context)
    assert (response["results"][0]["resultCode"], response["results"][0]["resultString"]) == ("Succeeded", "processed")
    again = handler.lambda_handler(_batch_task(bucket, key), context)
    assert again["results"][0]["resultString"] == "skipped"
    assert [v["name"] for v in manifest(s3, bucket, "processed/cfg/a/")["variants"]] == ["thumbnail", "large"]
    assert keys_under(s3, bucket, "processed/cfg/a/") == [
        "processed/cfg/a/large.jpg",
        "processed/cfg/a/manifest.json",
        "processed/cfg/a/thumbnail.webp",
    ]
