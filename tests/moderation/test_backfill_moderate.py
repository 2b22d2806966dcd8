"""`image-pipeline backfill --moderate`: moderation turned on after images were published. A dry
run lists what would be held and changes nothing; the real run holds exactly those (outputs
removed, raw tagged held, in the review queue); images already judged are skipped on a rerun."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from image_pipeline.processor import ImageProcessor
from image_pipeline.service import ImageService, ObjectRef
from image_pipeline.settings import parse_variants
from image_pipeline.storage.s3 import S3Connection
from tests.images import photo

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = "thumbnail:150x150:cover:webp;medium:800x800:jpeg"


def backfill(bucket: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "image_pipeline.cli", "backfill", f"s3://{bucket}/raw/", "--moderate", *args],
        cwd=ROOT,
        env={**os.environ, "VARIANTS": VARIANTS, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def publish_without_moderation(s3, bucket: str, moto_server: str, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=photo(400 + 10 * i, 300))
    service = ImageService(ImageProcessor(parse_variants(VARIANTS)))

    async def main():
        connection = await S3Connection.open(endpoint_url=moto_server)
        try:
            for key in keys:
                assert (await service.handle(connection.store(bucket), ObjectRef(bucket, key))).status == "processed"
        finally:
            await connection.close()

    asyncio.run(main())


def test_dry_run_lists_then_the_run_holds_and_a_rerun_skips(s3, bucket, moto_server):
    keys = ["raw/a/one.jpg", "raw/a/two.jpg"]
    publish_without_moderation(s3, bucket, moto_server, keys)
    published = keys_under(s3, bucket, "processed/")
    flag_all = {"MODERATION": "local", "MODERATION_THRESHOLD": "0"}

    dry = backfill(bucket, "--dry-run", **flag_all)
    assert dry.returncode == 0, dry.stderr
    assert "would hold: raw/a/one.jpg" in dry.stdout and "would hold: raw/a/two.jpg" in dry.stdout
    assert "0 passed, 2 would hold" in dry.stdout
    assert keys_under(s3, bucket, "processed/") == published and keys_under(s3, bucket, "moderation/") == []

    real = backfill(bucket, **flag_all)
    assert real.returncode == 0, real.stderr
    assert "2 held" in real.stdout
    assert keys_under(s3, bucket, "processed/") == []
    assert keys_under(s3, bucket, "moderation/held/") == [
        "moderation/held/a/one.jpg.json",
        "moderation/held/a/two.jpg.json",
    ]
    for key in keys:
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags["image-pipeline-status"] == "held"

    again = backfill(bucket, **flag_all)
    assert "0 held, 2 skipped" in again.stdout


def test_the_default_threshold_passes_benign_photos_and_moderation_off_is_refused(s3, bucket, moto_server):
    publish_without_moderation(s3, bucket, moto_server, ["raw/b/one.jpg"])
    passed = backfill(bucket, "--dry-run", MODERATION="local")
    assert passed.returncode == 0 and "1 passed, 0 would hold" in passed.stdout
    off = backfill(bucket, "--dry-run", MODERATION="off")
    assert off.returncode == 2 and "MODERATION=local or rekognition" in off.stderr
