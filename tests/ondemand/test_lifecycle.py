"""Outputs made on request live and die with their image: removed with it (ObjectRemoved, the API's
DELETE), and never outliving a new upload or a configuration change that would change their bytes."""

from __future__ import annotations

from image_pipeline.service import ObjectRef
from tests.images import photo
from tests.ondemand.conftest import call, process
from tests.ondemand.test_cdn_function import PREFIX, keys, upload

MADE = ("w640.webp", "w256", "w1080.avif")


def make_some(miss, bucket):
    for leaf in MADE:
        assert call(miss, f"/{PREFIX}{leaf}")["statusCode"] == 200


def test_removing_the_upload_removes_what_was_made_on_request_but_not_a_nested_image(s3, bucket, cdn):
    miss = cdn(VARIANTS="thumbnail:150x150:cover:webp;xl:2400x2400:jpeg:lazy")
    upload(s3, bucket)
    upload(s3, bucket, "raw/od/pic/w640.jpg")  # another image whose outputs nest under ours
    for key in ("raw/od/pic.jpg", "raw/od/pic/w640.jpg"):
        assert process(miss, bucket, key).status == "processed"
    make_some(miss, bucket)
    assert call(miss, f"/{PREFIX}xl.jpg")["statusCode"] == 200
    nested = keys(s3, bucket, "processed/od/pic/w640/")
    assert nested

    s3.delete_object(Bucket=bucket, Key="raw/od/pic.jpg")
    outcome = miss.runtime.handle(ObjectRef(bucket, "raw/od/pic.jpg", kind="removed"))

    assert outcome.status == "removed"
    assert keys(s3, bucket) == nested  # ours all gone (lazy and width outputs too); the nested image kept


def test_a_new_upload_under_the_same_key_drops_the_outputs_made_from_the_old_one(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket, data=photo(1200, 800))
    process(miss, bucket, "raw/od/pic.jpg")
    make_some(miss, bucket)

    upload(s3, bucket, data=photo(900, 900))  # replaced: another picture
    assert process(miss, bucket, "raw/od/pic.jpg").status == "processed"

    assert not any(k.rpartition("/")[2] in MADE for k in keys(s3, bucket))
    again = call(miss, f"/{PREFIX}w640.webp")  # made again, from the new upload
    from tests.images import decode
    from tests.ondemand.conftest import body

    assert decode(body(again)).size == (640, 640)


def test_a_configuration_change_that_changes_bytes_drops_them_when_the_image_is_processed_again(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    make_some(miss, bucket)

    changed = cdn(KEEP_ICC_PROFILE="true")  # in the fingerprint: every manifest is stale
    assert changed.runtime.service.fingerprint != miss.runtime.service.fingerprint
    assert process(changed, bucket, "raw/od/pic.jpg").status == "processed"  # a replay or a backfill

    assert not any(k.rpartition("/")[2] in MADE for k in keys(s3, bucket))


def test_the_same_configuration_replayed_keeps_them(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    make_some(miss, bucket)
    assert process(miss, bucket, "raw/od/pic.jpg").status == "skipped"
    assert all(f"{PREFIX}{leaf}" in keys(s3, bucket) for leaf in MADE)


def test_turning_a_variant_lazy_leaves_stored_outputs_current_and_its_spec_still_counts():
    from image_pipeline.processor import ImageProcessor
    from image_pipeline.processor.fingerprint import describe, fingerprint
    from image_pipeline.settings import parse_variants

    plain = ImageProcessor(parse_variants("thumbnail:150x150:cover:webp;large:1920x1920:jpeg"))
    lazy = ImageProcessor(parse_variants("thumbnail:150x150:cover:webp;large:1920x1920:jpeg:lazy"))
    bigger = ImageProcessor(parse_variants("thumbnail:150x150:cover:webp;large:2400x2400:jpeg:lazy"))
    assert describe(lazy) == describe(plain)  # when it is made does not change its bytes
    assert fingerprint(lazy) == fingerprint(plain)
    assert fingerprint(bigger) != fingerprint(lazy)  # its box does: its stored output is made again


class ReprocessedMeanwhile:
    """A real store in which the image is processed again (a new manifest) right after an output
    made on request is written: what a new upload's invocation does while a request makes a size."""

    def __init__(self, store, manifest_key: str) -> None:
        self.store, self.manifest_key = store, manifest_key

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def write_if(self, key, data, content_type, metadata, *, etag):
        await self.store.write_if(key, data, content_type, metadata, etag=etag)
        if key != self.manifest_key:
            current = await self.store.read(self.manifest_key)
            await self.store.write(self.manifest_key, current.data + b"\n", "application/json", {})


def test_an_output_made_while_its_image_is_processed_again_is_not_left_behind(s3, bucket, cdn):
    miss = cdn()
    upload(s3, bucket)
    process(miss, bucket, "raw/od/pic.jpg")
    wanted = miss.ondemand.wanted_width(miss.ondemand.width("w640.webp", f"/{PREFIX}w640.webp", None))

    async def make():
        store = ReprocessedMeanwhile(await miss.runtime.store(bucket), f"{PREFIX}manifest.json")
        return await miss.ondemand.get(store, PREFIX, wanted)

    made = miss.runtime.run(make)
    assert made.made and made.data  # this request still gets its bytes
    assert f"{PREFIX}w640.webp" not in keys(s3, bucket)  # but they are not kept for the next one


def test_in_delete_mode_there_is_no_upload_to_make_sizes_from(s3, bucket, cdn):
    miss = cdn(RAW_DISPOSITION="delete")
    upload(s3, bucket)
    assert process(miss, bucket, "raw/od/pic.jpg").status == "processed"
    assert call(miss, f"/{PREFIX}w640.webp")["statusCode"] == 404
    assert f"{PREFIX}w640.webp" not in keys(s3, bucket)
