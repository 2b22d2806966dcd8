"""The moderation gate in the service, against a real S3 API (moto server): held images publish
nothing, flagged ones may be blurred instead, an engine without a verdict is retried and then
holds the image (fail closed), and a review approves or rejects what was held."""

from __future__ import annotations

import asyncio
import io
import json
import os

import pytest
from PIL import Image, ImageStat

from image_pipeline.errors import ModerationUnavailable
from image_pipeline.moderation import gate_from
from image_pipeline.notify import Notifier
from image_pipeline.processor import ImageProcessor
from image_pipeline.service import ImageService, ObjectRef, ReviewConflict
from image_pipeline.settings import Settings, parse_variants
from image_pipeline.storage.s3 import S3Connection
from tests.images import photo
from tests.moderation.rekognition_standin import label

VARIANTS = "thumbnail:150x150:cover:webp;medium:800x800:jpeg"


def service(**env: str) -> ImageService:
    settings = Settings.from_env({**os.environ, "VARIANTS": VARIANTS, **env})
    return ImageService(ImageProcessor(parse_variants(VARIANTS)), gate=gate_from(settings))


def run(moto_server, bucket, body):
    async def main():
        connection = await S3Connection.open(endpoint_url=moto_server)
        try:
            return await body(connection.store(bucket))
        finally:
            await connection.close()

    return asyncio.run(main())


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def tags(s3, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def record(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def notifier() -> Notifier:
    return Notifier("bus", raw_prefix="raw/", processed_prefix="processed/")


KEY = "raw/u/beach.jpg"


def test_a_threshold_of_zero_holds_every_image_and_publishes_nothing(s3, bucket, moto_server):
    etag = s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))["ETag"].strip('"')
    gate = service(MODERATION="local", MODERATION_THRESHOLD="0")

    async def body(store):
        outcome = await gate.handle(store, ObjectRef(bucket, KEY))
        event = await notifier().entry(store, ObjectRef(bucket, KEY), outcome)
        again = await gate.handle(store, ObjectRef(bucket, KEY))  # a duplicate delivery: held again
        return outcome, event, again

    outcome, event, again = run(moto_server, bucket, body)
    assert (outcome.status, again.status) == ("held", "held")
    assert keys_under(s3, bucket, "processed/") == []
    assert tags(s3, bucket, KEY)["image-pipeline-status"] == "held"
    assert "image-pipeline-error" not in tags(s3, bucket, KEY)
    held = record(s3, bucket, "moderation/records/u/beach.jpg.json")
    assert held["state"] == "held" and held["reason"] == "flagged" and held["etag"] == etag
    assert held["labels"] == ["nsfw"] and 0 <= held["scores"]["nsfw"] < 0.5  # a benign photo, flagged at 0
    assert held["engine"] == "local" and held["frames"] == [0]
    assert keys_under(s3, bucket, "moderation/held/") == ["moderation/held/u/beach.jpg.json"]  # the review queue
    assert event["DetailType"] == "Image Held"
    detail = json.loads(event["Detail"])
    assert detail["labels"] == ["nsfw"] and detail["reason"] == "flagged" and detail["id"] == "u/beach.jpg"
    assert detail["moderation_key"] == "moderation/records/u/beach.jpg.json"


def test_a_threshold_of_one_publishes_with_the_scores_in_the_manifest(s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    gate = service(MODERATION="local", MODERATION_THRESHOLD="1")
    outcome = run(moto_server, bucket, lambda store: gate.handle(store, ObjectRef(bucket, KEY)))
    assert outcome.status == "processed"
    manifest = record(s3, bucket, "processed/u/beach/manifest.json")
    assert manifest["moderation"]["action"] == "publish"
    assert manifest["moderation"]["labels"] == [] and "nsfw" in manifest["moderation"]["scores"]
    assert tags(s3, bucket, KEY)["image-pipeline-status"] == "processed"


def checkerboard(width: int, height: int, cell: int = 16) -> bytes:
    image = Image.new("RGB", (width, height), (240, 240, 240))
    for y in range(0, height, cell):
        for x in range((y // cell) % 2 * cell, width, 2 * cell):
            image.paste((20, 60, 160), (x, y, x + cell, y + cell))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


def test_blur_publishes_strongly_blurred_variants(s3, bucket, moto_server):
    original = checkerboard(640, 480)
    s3.put_object(Bucket=bucket, Key=KEY, Body=original)
    gate = service(MODERATION="local", MODERATION_THRESHOLD="0", MODERATION_ACTION="blur")
    outcome = run(moto_server, bucket, lambda store: gate.handle(store, ObjectRef(bucket, KEY)))
    assert outcome.status == "processed"
    manifest = record(s3, bucket, "processed/u/beach/manifest.json")
    assert manifest["moderation"]["action"] == "blur" and manifest["moderation"]["blurred"] is True
    medium = Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key="processed/u/beach/medium.jpg")["Body"].read()))
    sharp = Image.open(io.BytesIO(original)).resize(medium.size)
    # A strong blur leaves almost no detail: the edges' energy collapses.
    from PIL import ImageFilter

    def edges(image: Image.Image) -> float:
        return ImageStat.Stat(image.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0]

    assert medium.size == (640, 480)
    assert edges(medium) < edges(sharp) / 5


def test_held_then_approved_is_published_once_and_the_same_decision_answers_the_same(s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    gate = service(MODERATION="local", MODERATION_THRESHOLD="0")

    async def body(store):
        await gate.handle(store, ObjectRef(bucket, KEY))
        first = await gate.review(store, bucket, KEY, "approve", "admin-1")
        again = await gate.review(store, bucket, KEY, "approve", "admin-2")
        with pytest.raises(ReviewConflict):
            await gate.review(store, bucket, KEY, "reject", "admin-1")
        event = await notifier().entry(store, ObjectRef(bucket, KEY), first.outcome)
        return first, again, event

    first, again, event = run(moto_server, bucket, body)
    assert first.outcome.status == "processed" and not first.repeated
    assert again.repeated and again.outcome.status == "skipped" and again.record["decided_by"] == "admin-1"
    assert "processed/u/beach/manifest.json" in keys_under(s3, bucket, "processed/")
    manifest = record(s3, bucket, "processed/u/beach/manifest.json")
    assert manifest["moderation"]["action"] == "approved" and manifest["moderation"]["decided_by"] == "admin-1"
    assert tags(s3, bucket, KEY)["image-pipeline-status"] == "processed"
    assert event["DetailType"] == "Image Processed"
    assert keys_under(s3, bucket, "moderation/held/") == []


def test_rejected_removes_the_upload_and_a_new_upload_starts_over(s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    holds, passes = service(MODERATION="local", MODERATION_THRESHOLD="0"), service(MODERATION="local")

    async def body(store):
        await holds.handle(store, ObjectRef(bucket, KEY))
        rejected = await holds.review(store, bucket, KEY, "reject", "admin-1")
        again = await holds.review(store, bucket, KEY, "reject", "admin-1")
        with pytest.raises(ReviewConflict):
            await holds.review(store, bucket, KEY, "approve", "admin-1")
        event = await notifier().entry(store, ObjectRef(bucket, KEY), rejected.outcome)
        gone = await store.etag(KEY)
        s3.put_object(Bucket=bucket, Key=KEY, Body=photo(600, 400))
        later = await passes.handle(store, ObjectRef(bucket, KEY))
        return rejected, again, event, gone, later

    rejected, again, event, gone, later = run(moto_server, bucket, body)
    assert gone is None and rejected.outcome.error_code == "moderated" and again.repeated
    assert event["DetailType"] == "Image Rejected" and json.loads(event["Detail"])["error_code"] == "moderated"
    assert later.status == "processed"  # judged afresh: the default threshold passes a benign photo


def test_a_decision_on_an_image_never_held_is_a_conflict(s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(320, 240))
    gate = service(MODERATION="local")

    async def body(store):
        await gate.handle(store, ObjectRef(bucket, KEY))
        for decision in ("approve", "reject"):
            with pytest.raises(ReviewConflict):
                await gate.review(store, bucket, KEY, decision, "admin")
        with pytest.raises(ReviewConflict):
            await gate.review(store, bucket, "raw/u/never.jpg", "approve", "admin")

    run(moto_server, bucket, body)


def test_a_held_upload_replacing_a_published_one_unpublishes_it(s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))

    async def body(store):
        await service(MODERATION="local").handle(store, ObjectRef(bucket, KEY))
        published = keys_under(s3, bucket, "processed/")
        s3.put_object(Bucket=bucket, Key=KEY, Body=photo(500, 400))
        outcome = await service(MODERATION="local", MODERATION_THRESHOLD="0").handle(store, ObjectRef(bucket, KEY))
        return published, outcome

    published, outcome = run(moto_server, bucket, body)
    assert "processed/u/beach/manifest.json" in published
    assert outcome.status == "held" and keys_under(s3, bucket, "processed/") == []


@pytest.mark.parametrize(
    ("data", "frames"),
    [
        (photo(1, 10000, fmt="PNG"), [0]),
        ("gif", [0, 3, 6, 9]),
    ],
)
def test_a_strip_and_an_animation_get_a_verdict(s3, bucket, moto_server, data, frames):
    if data == "gif":
        pictures = [Image.new("RGB", (120, 90), (20 * i, 90, 200 - 10 * i)) for i in range(12)]
        out = io.BytesIO()
        pictures[0].save(out, "GIF", save_all=True, append_images=pictures[1:], duration=80, loop=0)
        data = out.getvalue()
    s3.put_object(Bucket=bucket, Key="raw/u/odd.png", Body=data)
    gate = service(MODERATION="local", MODERATION_THRESHOLD="0")
    outcome = run(moto_server, bucket, lambda store: gate.handle(store, ObjectRef(bucket, "raw/u/odd.png")))
    assert outcome.status == "held"
    assert record(s3, bucket, "moderation/records/u/odd.png.json")["frames"] == frames


# -- Rekognition (a stand-in on 127.0.0.1) ------------------------------------------------------


def rekognition_service(stand_in, **env: str) -> ImageService:
    return service(MODERATION="rekognition", AWS_ENDPOINT_URL_REKOGNITION=stand_in.url, **env)


def test_rekognition_labels_in_the_chosen_categories_hold_the_image(s3, bucket, moto_server, rekognition):
    rekognition.answer(
        [
            label("Violence", 91.5),
            label("Weapon Violence", 90.2, "Violence", 2),
            label("Alcohol", 97.0),
        ]
    )
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    gate = rekognition_service(rekognition, MODERATION_MIN_CONFIDENCE="60")
    outcome = run(moto_server, bucket, lambda store: gate.handle(store, ObjectRef(bucket, KEY)))
    assert outcome.status == "held"
    held = record(s3, bucket, "moderation/records/u/beach.jpg.json")
    assert held["labels"] == ["Violence", "Weapon Violence"]  # Alcohol is not a chosen category
    assert held["scores"] == {"Violence": 0.915, "Weapon Violence": 0.902, "Alcohol": 0.97}
    (request,) = rekognition.requests
    sent = Image.open(io.BytesIO(request["image"]))
    assert sent.format == "JPEG" and max(sent.size) == 320 and request["min_confidence"] == 60.0


def test_rekognition_without_labels_publishes(s3, bucket, moto_server, rekognition):
    rekognition.answer([label("Alcohol", 97.0)])
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    gate = rekognition_service(rekognition)
    outcome = run(moto_server, bucket, lambda store: gate.handle(store, ObjectRef(bucket, KEY)))
    assert outcome.status == "processed"
    assert record(s3, bucket, "processed/u/beach/manifest.json")["moderation"]["scores"] == {"Alcohol": 0.97}


def test_rekognition_throttling_is_retried_by_the_client(s3, bucket, moto_server, rekognition):
    rekognition.answer("throttle", "throttle", [label("Hate Symbols", 88.0)])
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    gate = rekognition_service(rekognition, S3_MAX_ATTEMPTS="5")
    outcome = run(moto_server, bucket, lambda store: gate.handle(store, ObjectRef(bucket, KEY)))
    assert outcome.status == "held" and len(rekognition.requests) == 3


def test_no_verdict_is_retried_then_held_as_moderation_unavailable(s3, bucket, moto_server, rekognition):
    rekognition.answer(500)
    s3.put_object(Bucket=bucket, Key=KEY, Body=photo(640, 480))
    gate = rekognition_service(rekognition, S3_MAX_ATTEMPTS="1", MODERATION_MAX_ATTEMPTS="3")

    async def body(store):
        tries = []
        for _ in range(2):  # the record is retried (Lambda: a batch item failure), as a storage error would be
            with pytest.raises(ModerationUnavailable) as raised:
                await gate.handle(store, ObjectRef(bucket, KEY))
            tries.append(raised.value.permanent)
        outcome = await gate.handle(store, ObjectRef(bucket, KEY))
        return tries, outcome

    tries, outcome = run(moto_server, bucket, body)
    assert tries == [False, False]
    assert outcome.status == "held" and outcome.error_code == "moderation_unavailable"
    assert keys_under(s3, bucket, "processed/") == []
    assert tags(s3, bucket, KEY) == {"image-pipeline-status": "held", "image-pipeline-error": "moderation_unavailable"}
    held = record(s3, bucket, "moderation/records/u/beach.jpg.json")
    assert held["reason"] == "moderation_unavailable" and held["attempts"] == 3
