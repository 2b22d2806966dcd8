"""At-least-once delivery: the same event twice, two invocations for one key at the same time,
and an upload overwritten with a different picture. Whatever the order, the bucket ends with one
manifest that matches the variants next to it and the latest upload."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter

import pytest
from litestar_storages import MemoryStorage

from image_pipeline.errors import StorageFailure
from image_pipeline.processor import ImageProcessor, VariantConfig
from image_pipeline.runtime import Runtime
from image_pipeline.service import MAX_ROUNDS, ImageService, ObjectRef
from image_pipeline.settings import Settings
from image_pipeline.storage import LitestarStore
from tests.images import decode, photo
from tests.reliability.faultproxy import Fault
from tests.reliability.support import (
    STATUS,
    VARIANT_FILES,
    all_keys,
    check_manifests,
    manifest,
    s3_event,
    sqs_event,
    tags,
    upload,
)


def test_the_same_event_twice_and_the_same_message_twice_in_a_batch_do_the_work_once(
    s3, bucket, handler, context, proxy, settings_env
):
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)
    obj = upload(s3, bucket, "raw/dup/photo.jpg", photo(640, 480))
    batch = sqs_event(bucket, [obj, obj])  # SQS may deliver a message twice, even in one batch

    assert handler.lambda_handler(batch, context) == {"batchItemFailures": []}
    again = handler.lambda_handler(s3_event(bucket, [obj]), context)

    assert again["results"] == [{"key": obj.key, "status": "skipped", "error_code": None}]
    assert len(proxy.requests("PUT", "/processed/")) == len(VARIANT_FILES) + 1  # one set of outputs, ever
    # The raw GET goes out together with the manifest GET (one round trip for every new image),
    # so a duplicate costs one wasted GET, but never a decode, an encode or a write.
    assert len(proxy.requests("GET", "/raw/dup/photo.jpg$")) == 3
    assert tags(s3, bucket, obj.key) == {STATUS: "processed"}
    (record,) = check_manifests(s3, bucket)
    assert record["source"]["etag"] == obj.etag


def run_concurrently(endpoint: str, refs: list[ObjectRef]) -> list[str]:
    """Each ref handled by its own Runtime (its own loop and S3 client: like separate Lambda
    containers), all released at the same moment."""
    runtimes = [Runtime(Settings.from_env({**os.environ, "AWS_ENDPOINT_URL_S3": endpoint})) for _ in refs]
    start = threading.Barrier(len(refs))
    statuses: list[str] = [""] * len(refs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            statuses[i] = runtimes[i].handle(refs[i]).status
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(refs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for runtime in runtimes:
        runtime.close()
    assert not errors, errors
    return statuses


def test_two_invocations_for_the_same_key_at_once_end_consistent(s3, bucket, proxy):
    obj = upload(s3, bucket, "raw/race/photo.jpg", photo(1600, 1200))
    # Slow every output write, so both invocations pass the "already done?" check before either
    # has written anything: the race really happens, every time (1 s: a runtime that starts late
    # on a loaded machine still reads before the other's manifest lands).
    proxy.add(Fault.delay(1.0), method="PUT", path="/processed/", times=None)
    ref = ObjectRef(bucket, obj.key, obj.etag, obj.size)

    statuses = run_concurrently(proxy.url, [ref, ref])

    assert statuses == ["processed", "processed"]  # both did the work (the race happened) ...
    # every output was written by both (≥ 2 PUTs each: an SDK retry of a PUT moto answered with a
    # 500 adds one, which is the client doing its job, not a third writer)
    puts = Counter(seen.path.rsplit("/", 1)[-1] for seen in proxy.requests("PUT", "/processed/"))
    assert set(puts) == {*VARIANT_FILES, "manifest.json"} and min(puts.values()) >= 2, puts
    (record,) = check_manifests(s3, bucket)  # ... and the result is still one consistent set
    assert record["source"]["etag"] == obj.etag
    assert all_keys(s3, bucket, "processed/") == sorted(
        ["processed/race/photo/manifest.json"] + [f"processed/race/photo/{f}" for f in VARIANT_FILES]
    )
    assert tags(s3, bucket, obj.key) == {STATUS: "processed"}


def test_an_overwrite_is_reprocessed_and_replaces_every_variant(s3, bucket, handler, context):
    key = "raw/over/photo.jpg"
    first = upload(s3, bucket, key, photo(1200, 800))
    handler.lambda_handler(s3_event(bucket, [first]), context)
    before = manifest(s3, bucket, "processed/over/photo/")

    second = upload(s3, bucket, key, photo(500, 900, "PNG"))  # same key, new picture, new ETag
    assert second.etag != first.etag
    result = handler.lambda_handler(s3_event(bucket, [second]), context)

    assert result["results"][0]["status"] == "processed"
    (after,) = check_manifests(s3, bucket)  # every listed variant exists with the new bytes and ETag
    assert after["source"]["etag"] == second.etag and after["source"]["type"] == "png"
    assert (after["source"]["width"], after["source"]["height"]) == (500, 900)
    assert {v["key"] for v in after["variants"]} == {v["key"] for v in before["variants"]}
    large = decode(s3.get_object(Bucket=bucket, Key="processed/over/photo/large.jpg")["Body"].read())
    assert large.size == (500, 900)
    assert all(v["bytes"] != w["bytes"] for v, w in zip(after["variants"], before["variants"], strict=True))


def test_a_late_event_for_the_previous_upload_does_no_work(s3, bucket, handler, context, proxy, settings_env):
    key = "raw/late/photo.jpg"
    old = upload(s3, bucket, key, photo(800, 600))
    new = upload(s3, bucket, key, photo(600, 800))
    handler.lambda_handler(s3_event(bucket, [new]), context)
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)

    result = handler.lambda_handler(s3_event(bucket, [old]), context)  # delivered out of order

    assert result["results"][0]["status"] == "skipped"  # the object it names is already done
    assert proxy.requests("PUT", "/processed/") == []
    assert manifest(s3, bucket, "processed/late/photo/")["source"]["etag"] == new.etag


def test_concurrent_invocations_for_different_keys_all_complete(s3, bucket, proxy):
    objs = [upload(s3, bucket, f"raw/many/{i}.jpg", photo(400 + 10 * i, 300)) for i in range(4)]
    refs = [ObjectRef(bucket, o.key, o.etag, o.size) for o in objs]
    assert run_concurrently(proxy.url, refs) == ["processed"] * 4
    assert len(check_manifests(s3, bucket)) == 4
    assert all(tags(s3, bucket, o.key) == {STATUS: "processed"} for o in objs)


def _overwrite_while_outputs_are_written(s3, bucket, proxy, disposition, finish_new_first):
    """An upload is processed through a proxy that holds every output PUT for 0.5 s; while the
    first PUT is held the key is uploaded again, and (optionally) the new upload is processed
    to completion by another invocation straight against S3, before the held writes land."""
    key = "raw/swap/photo.jpg"
    first = upload(s3, bucket, key, photo(1200, 800))
    proxy.add(Fault.delay(0.5), method="PUT", path="/processed/", times=None)
    env = {**os.environ, "RAW_DISPOSITION": disposition}
    slow = Runtime(Settings.from_env({**env, "AWS_ENDPOINT_URL_S3": proxy.url}))
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(slow.handle(ObjectRef(bucket, key, first.etag))))
    worker.start()
    deadline = time.monotonic() + 20
    while not proxy.requests("PUT", "/processed/") and time.monotonic() < deadline:
        time.sleep(0.01)
    second = upload(s3, bucket, key, photo(600, 900, "PNG"))  # the user uploads again meanwhile
    if finish_new_first:
        fast = Runtime(Settings.from_env(env))
        assert fast.handle(ObjectRef(bucket, key, second.etag)).status == "processed"
        fast.close()
    worker.join(timeout=60)
    slow.close()
    return key, second, outcome[0]


def _outputs_match(s3, bucket, upload_) -> None:
    (record,) = check_manifests(s3, bucket)
    assert record["source"]["etag"] == upload_.etag
    large = decode(s3.get_object(Bucket=bucket, Key="processed/swap/photo/large.jpg")["Body"].read())
    assert large.size == (600, 900)  # the new picture's pixels, not the old one's
    thumb = s3.get_object(Bucket=bucket, Key="processed/swap/photo/thumbnail.webp")
    assert thumb["Metadata"]["source-etag"] == upload_.etag


def test_delete_mode_never_deletes_an_upload_that_replaced_the_one_processed(s3, bucket, proxy):
    key, second, outcome = _overwrite_while_outputs_are_written(s3, bucket, proxy, "delete", False)

    _outputs_match(s3, bucket, second)  # the new upload was processed before it was deleted
    assert outcome.status == "processed" and "replaced" in outcome.reason
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount") == 0


def test_stale_writes_landing_after_the_newer_upload_was_processed_are_redone(s3, bucket, proxy):
    key, second, outcome = _overwrite_while_outputs_are_written(s3, bucket, proxy, "tag", True)

    _outputs_match(s3, bucket, second)  # not the older picture, whose writes landed last
    assert outcome.status == "processed" and "replaced" in outcome.reason
    assert tags(s3, bucket, key) == {STATUS: "processed"}


class _ReplacedAfterEveryManifest(LitestarStore):
    """A real in-memory store in which the user uploads the raw key again right after each
    manifest is written: the pipeline can never finish a pass on the version it read."""

    RAW = "raw/busy/photo.jpg"

    def __init__(self) -> None:
        super().__init__(MemoryStorage())
        self.uploads = 0

    async def write(self, key, data, content_type, metadata):
        await super().write(key, data, content_type, metadata)
        if key.endswith("manifest.json"):
            self.uploads += 1
            await super().write(self.RAW, photo(300 + self.uploads, 200), "image/jpeg", {})


def test_an_upload_replaced_on_every_pass_is_reported_for_a_retry_not_tagged():
    store = _ReplacedAfterEveryManifest()
    service = ImageService(ImageProcessor([VariantConfig("small", 64, 64, format="webp")]))

    async def run():
        await store.write(store.RAW, photo(300, 200), "image/jpeg", {})
        store.uploads = 0
        return await service.handle(store, ObjectRef("bucket", store.RAW))

    with pytest.raises(StorageFailure) as failure:
        asyncio.run(run())

    assert failure.value.permanent is False  # reported, so Lambda / SQS deliver it again
    assert store.uploads == MAX_ROUNDS  # bounded: one pass per version it saw
    assert asyncio.run(store.get_tags(store.RAW)) == {}  # the newest upload is not marked processed
