"""One contract, every backend: S3 (moto server), filesystem and memory behave the same to the
service, and the service gives the same result on each."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from litestar_storages import FileSystemConfig, FileSystemStorage, MemoryStorage

from image_pipeline.errors import StorageFailure, TooLarge
from image_pipeline.processor import ImageProcessor, VariantConfig
from image_pipeline.service import ImageService, ObjectRef
from image_pipeline.storage import LitestarStore, ObjectChanged, ObjectNotFound
from image_pipeline.storage.s3 import S3Connection
from tests.images import decode, photo

# "s3-no-conditional-delete": S3 behind a proxy that answers a DELETE with If-Match 501
# NotImplemented, as LocalStack does: the store falls back to a HEAD and a plain DELETE.
BACKENDS = ["s3", "s3-no-conditional-delete", "filesystem", "memory"]


def run(coro):
    return asyncio.run(coro)


async def _open(kind: str, tmp_path, endpoint: str):
    if kind == "s3-no-conditional-delete":
        return await _open("s3", tmp_path, endpoint)
    if kind == "memory":
        return LitestarStore(MemoryStorage()), None
    if kind == "filesystem":
        return LitestarStore(FileSystemStorage(FileSystemConfig(path=tmp_path))), None
    import boto3

    bucket = f"contract-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    connection = await S3Connection.open(endpoint_url=endpoint, cache_control="public, max-age=60")
    return connection.store(bucket), connection


@pytest.fixture(params=BACKENDS)
def with_store(request, tmp_path, moto_server):
    """Run an async test body against a fresh store of each kind."""

    endpoint, proxy = moto_server, None
    if request.param == "s3-no-conditional-delete":
        from tests.reliability.faultproxy import Fault, FaultProxy

        proxy = FaultProxy(upstream=moto_server).start()
        proxy.add(Fault.not_implemented(), method="DELETE", header="If-Match", times=None)
        endpoint = proxy.url
        request.addfinalizer(proxy.stop)

    def call(body):
        async def main():
            store, connection = await _open(request.param, tmp_path, endpoint)
            try:
                return await body(store)
            finally:
                await store.close()
                if connection is not None:
                    await connection.close()

        return run(main())

    call.proxy = proxy
    return call


def test_write_then_read_returns_the_bytes_and_a_stable_etag(with_store):
    async def body(store):
        await store.write("a/b.bin", b"hello", "application/octet-stream", {"k": "v"})
        first = await store.read("a/b.bin")
        second = await store.read("a/b.bin")
        assert first.data == b"hello" and first.size == 5 and first.etag and first.etag == second.etag
        assert await store.etag("a/b.bin") == first.etag  # a HEAD agrees with the GET
        await store.write("a/b.bin", b"changed", "application/octet-stream", {})
        assert (await store.read("a/b.bin")).etag != first.etag

    with_store(body)


def test_missing_keys(with_store):
    async def body(store):
        assert await store.read_optional("nope") is None
        assert await store.exists("nope") is False
        assert await store.etag("nope") is None
        await store.write("here", b"x", "text/plain", {})
        assert await store.exists("here") is True
        with pytest.raises(ObjectNotFound):
            await store.read("nope")
        with pytest.raises(ObjectNotFound):
            await store.set_tags("nope", {"a": "b"})
        await store.delete("nope")  # deleting what is not there is not an error

    with_store(body)


@pytest.mark.parametrize("user_tags", [9, 10])
def test_the_uploaders_tags_always_stay_within_the_ten_tag_limit(with_store, user_tags):
    own = {f"user-{i}": str(i) for i in range(user_tags)}

    async def body(store):
        await store.write("t.jpg", b"data", "image/jpeg", {})
        await store.set_tags("t.jpg", own)
        await store.set_tags("t.jpg", {"image-pipeline-status": "failed", "image-pipeline-error": "corrupt_image"})
        expected = own | ({"image-pipeline-status": "failed"} if user_tags == 9 else {})
        assert await store.get_tags("t.jpg") == expected

    with_store(body)


def test_read_refuses_an_oversize_object(with_store):
    async def body(store):
        await store.write("big", b"x" * 100, "application/octet-stream", {})
        with pytest.raises(TooLarge):
            await store.read("big", max_bytes=99)

    with_store(body)


def test_metadata_comes_back_with_the_read_and_is_replaced_by_the_next_write(with_store):
    async def body(store):
        await store.write("raw/m.jpg", b"data", "image/jpeg", {"owner": "alice%40example.com", "k": "v"})
        assert (await store.read("raw/m.jpg")).metadata == {"owner": "alice%40example.com", "k": "v"}
        with pytest.raises(TooLarge) as caught:  # refused before the body: the owner is still known
            await store.read("raw/m.jpg", max_bytes=2)
        assert caught.value.metadata == {"owner": "alice%40example.com", "k": "v"}
        await store.set_tags("raw/m.jpg", {"image-pipeline-status": "processed"})  # tags leave it alone
        assert (await store.read("raw/m.jpg")).metadata["owner"] == "alice%40example.com"
        assert [o.key for o in await store.list("raw/")] == ["raw/m.jpg"]  # never listed beside it
        await store.write("raw/m.jpg", b"other", "image/jpeg", {})  # S3 replaces metadata on a PUT
        assert (await store.read("raw/m.jpg")).metadata == {}
        await store.write("raw/m.jpg", b"third", "image/jpeg", {"owner": "bob"})
        await store.delete("raw/m.jpg")
        await store.write("raw/m.jpg", b"back", "image/jpeg", {})  # a new object: none of the old one's
        assert (await store.read("raw/m.jpg")).metadata == {}

    with_store(body)


def test_the_service_records_the_owner_only_when_the_keys_tag_is_the_owners(with_store):
    from image_pipeline import ids

    service = ImageService(ImageProcessor([VariantConfig("small", 64, 64, format="webp")]))
    owner = "élodie@example.com"
    mine = ids.new_id(tag=ids.owner_tag(owner))
    forged = ids.new_id(tag=ids.owner_tag("mallory"))
    untagged = ids.new_id()

    async def body(store):
        owner_field = {"owner": ids.owner_metadata(owner)}
        assert owner_field["owner"].isascii() and "%" in owner_field["owner"]
        for image_id in (mine, forged, untagged):
            await store.write(f"raw/{image_id}/a.jpg", photo(96, 64), "image/jpeg", owner_field)
            assert (await service.handle(store, ObjectRef("bucket", f"raw/{image_id}/a.jpg"))).status == "processed"
        recorded = {
            image_id: json.loads(await store.read_optional(f"processed/{image_id}/a/manifest.json"))["owner"]
            for image_id in (mine, forged, untagged)
        }
        assert recorded == {mine: owner, forged: None, untagged: None}

    with_store(body)


def test_tags_merge_and_survive_until_delete(with_store):
    async def body(store):
        await store.write("t.jpg", b"data", "image/jpeg", {})
        await store.set_tags("t.jpg", {"owner": "alice"})
        await store.set_tags("t.jpg", {"image-pipeline-status": "processed"})
        assert await store.get_tags("t.jpg") == {"owner": "alice", "image-pipeline-status": "processed"}
        await store.delete("t.jpg")
        assert await store.read_optional("t.jpg") is None

    with_store(body)


def test_a_delete_for_one_version_never_removes_a_newer_upload(with_store):
    async def body(store):
        await store.write("raw/v.jpg", b"first", "image/jpeg", {})
        first = await store.read("raw/v.jpg")
        await store.write("raw/v.jpg", b"second", "image/jpeg", {})  # replaced after it was read
        with pytest.raises(ObjectChanged):
            await store.delete("raw/v.jpg", etag=first.etag)
        assert (await store.read("raw/v.jpg")).data == b"second"
        await store.delete("raw/v.jpg", etag=(await store.read("raw/v.jpg")).etag)
        assert await store.exists("raw/v.jpg") is False
        with pytest.raises(ObjectNotFound):
            await store.delete("raw/v.jpg", etag=first.etag)

    with_store(body)
    if with_store.proxy is not None:  # the server refused every conditional delete: the fallback ran
        assert with_store.proxy.injected("not_implemented") == 3


def test_a_conditional_write_lands_only_on_the_version_expected(with_store):
    async def body(store):
        await store.write_if("p/m.json", b"first", "application/json", {}, etag=None)  # created
        with pytest.raises(ObjectChanged):  # exists now: a second create loses
            await store.write_if("p/m.json", b"second", "application/json", {}, etag=None)
        first = await store.read("p/m.json")
        await store.write_if("p/m.json", b"third", "application/json", {}, etag=first.etag)  # replaced
        with pytest.raises(ObjectChanged):  # that version is gone
            await store.write_if("p/m.json", b"fourth", "application/json", {}, etag=first.etag)
        assert (await store.read("p/m.json")).data == b"third"

    with_store(body)


def test_the_service_gives_the_same_result_on_every_backend(with_store):
    service = ImageService(ImageProcessor([VariantConfig("small", 64, 64, format="webp")]))

    async def body(store):
        await store.write("raw/p/photo.jpg", photo(256, 128), "image/jpeg", {})
        outcome = await service.handle(store, ObjectRef("bucket", "raw/p/photo.jpg"))
        assert outcome.status == "processed"
        small = decode(await store.read_optional("processed/p/photo/small.webp"))
        assert small.format == "WEBP" and small.size == (64, 32)
        manifest = json.loads(await store.read_optional("processed/p/photo/manifest.json"))
        assert manifest["variants"][0]["key"] == "processed/p/photo/small.webp"
        assert await store.get_tags("raw/p/photo.jpg") == {"image-pipeline-status": "processed"}
        again = await service.handle(store, ObjectRef("bucket", "raw/p/photo.jpg", etag=manifest["source"]["etag"]))
        assert again.status == "skipped"

    with_store(body)


def test_state_and_remove_give_the_same_result_on_every_backend(with_store):
    service = ImageService(ImageProcessor([VariantConfig("small", 64, 64, format="webp")]))

    async def body(store):
        await store.write("raw/r/photo.jpg", photo(256, 128), "image/jpeg", {})
        etag = (await store.read("raw/r/photo.jpg")).etag
        assert await service.state(store, "raw/r/photo.jpg", etag) == "missing"
        await service.handle(store, ObjectRef("bucket", "raw/r/photo.jpg"))
        assert await service.state(store, "raw/r/photo.jpg", etag) == "current"
        assert await service.state(store, "raw/r/photo.jpg", "0" * 32) == "stale"
        assert (await service.remove(store, "raw/r/photo.png", delete_raw=True)).status == "ignored"
        removed = await service.remove(store, "raw/r/photo.jpg", delete_raw=True)
        assert removed.status == "removed"
        for key in ("raw/r/photo.jpg", "processed/r/photo/small.webp", "processed/r/photo/manifest.json"):
            assert await store.exists(key) is False, key
        assert await service.state(store, "raw/r/photo.jpg", etag) == "missing"

    with_store(body)


def test_keys_that_could_escape_the_output_prefix_are_refused(with_store):
    service = ImageService(ImageProcessor())

    async def body(store):
        for key in ("raw/../etc/passwd.jpg", "raw//x.jpg", "raw/./x.jpg", "raw/a\x00b.jpg", "raw/a\nb.jpg"):
            outcome = await service.handle(store, ObjectRef("bucket", key))
            assert (outcome.status, outcome.error_code) == ("failed", "invalid_key"), key

    with_store(body)


def test_storage_failures_are_typed():
    async def body():
        connection = await S3Connection.open(endpoint_url="http://127.0.0.1:9", max_attempts=1)
        try:
            with pytest.raises(StorageFailure) as caught:
                await connection.store("b").write("k", b"x", "text/plain", {})
            assert caught.value.code == "storage_error" and not caught.value.permanent
        finally:
            await connection.close()

    run(body())


def test_list_pages_through_a_prefix_in_key_order(with_store):
    async def body(store):
        keys = ["raw/b/2.jpg", "raw/a/1.jpg", "raw/ab.jpg", "raw/c/3.jpg", "processed/a/x.webp", "rawish.jpg"]
        for i, key in enumerate(keys):
            await store.write(key, b"x" * (i + 1), "image/jpeg", {})
        await store.set_tags("raw/a/1.jpg", {"image-pipeline-status": "processed"})  # tags are not listed
        listed = await store.list("raw/")
        assert [o.key for o in listed] == ["raw/a/1.jpg", "raw/ab.jpg", "raw/b/2.jpg", "raw/c/3.jpg"]
        first = listed[0]
        assert first.size == 2 and first.etag == await store.etag("raw/a/1.jpg")
        assert first.last_modified.tzinfo is not None
        # a prefix that is not a whole "directory" still matches like S3's
        assert [o.key for o in await store.list("raw/a")] == ["raw/a/1.jpg", "raw/ab.jpg"]
        # pages: limit, then start_after the last key of the page
        page = await store.list("raw/", limit=2)
        assert [o.key for o in page] == ["raw/a/1.jpg", "raw/ab.jpg"]
        rest = await store.list("raw/", start_after=page[-1].key, limit=2)
        assert [o.key for o in rest] == ["raw/b/2.jpg", "raw/c/3.jpg"]
        assert await store.list("raw/", start_after="raw/c/3.jpg") == []
        assert await store.list("nothing/") == []

    with_store(body)
