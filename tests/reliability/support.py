"""What the reliability tests share: real S3 events built from events/*.json, and the checks a
user would make on a bucket (tags, keys, manifests whose variants really exist)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from urllib.parse import quote_plus

from tests.conftest import EVENTS

STATUS, ERROR = "image-pipeline-status", "image-pipeline-error"
REJECTION_CODES = {
    "empty_file",
    "unsupported_type",
    "too_large",
    "too_many_pixels",
    "too_many_frames",
    "corrupt_image",
    "invalid_key",
}
VARIANT_FILES = ("thumbnail.webp", "medium.webp", "large.jpg")  # the default VARIANTS


@dataclass(frozen=True)
class Uploaded:
    key: str
    etag: str
    size: int


def upload(s3, bucket: str, key: str, data: bytes) -> Uploaded:
    etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
    return Uploaded(key, etag, len(data))


def tags(s3, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def all_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def output_prefix(raw_key: str) -> str:
    """Where the default settings put a raw key's outputs (mirrors keys.output_prefix)."""
    rest = raw_key.removeprefix("raw/")
    head, _, name = rest.rpartition("/")
    stem, dot, _ = name.rpartition(".")
    return "processed/" + (head + "/" if head else "") + (stem if dot and stem else name) + "/"


def manifest(s3, bucket: str, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())


def check_manifests(s3, bucket: str) -> list[dict]:
    """Every manifest in the bucket lists variants that exist with exactly the listed byte counts
    and the manifest's source ETag; returns the manifests. This is the "nothing half-written"
    invariant: a manifest is only ever written after all its variants."""
    found = []
    for key in all_keys(s3, bucket, "processed/"):
        if not key.endswith("/manifest.json"):
            continue
        record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert record["variants"], key
        for variant in record["variants"]:
            head = s3.head_object(Bucket=bucket, Key=variant["key"])
            assert head["ContentLength"] == variant["bytes"], (key, variant)
            assert head["Metadata"]["source-etag"] == record["source"]["etag"], (key, variant)
            assert variant["key"].startswith(key.removesuffix("manifest.json")), (key, variant)
        found.append(record)
    return found


def _template_record() -> dict:
    return json.loads((EVENTS / "s3-put.json").read_text())["Records"][0]


def s3_event(bucket: str, objects: list[Uploaded]) -> dict:
    """One S3 notification naming every object (keys URL-encoded as S3 does)."""
    template = _template_record()
    records = []
    for obj in objects:
        record = copy.deepcopy(template)
        record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
        record["s3"]["object"].update(key=quote_plus(obj.key, safe="/"), eTag=obj.etag, size=obj.size)
        records.append(record)
    return {"Records": records}


def sqs_event(bucket: str, objects: list[Uploaded], first_id: int = 0) -> dict:
    """An SQS batch: one message per object, each body an S3 notification; ids `msg-<n>`."""
    template = json.loads((EVENTS / "sqs-s3.json").read_text())["Records"][0]
    records = []
    for i, obj in enumerate(objects):
        record = copy.deepcopy(template)
        record["messageId"] = f"msg-{first_id + i}"
        record["body"] = json.dumps(s3_event(bucket, [obj]))
        records.append(record)
    return {"Records": records}


def metrics_printed(capsys) -> dict[str, list[float]]:
    """The EMF metrics Powertools printed (to stdout, as on Lambda) since the last call."""
    found: dict[str, list[float]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            record = json.loads(line)
            for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                found.setdefault(metric["Name"], []).extend(record[metric["Name"]])
    return found
