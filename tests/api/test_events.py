"""Completion events through moto server's EventBridge: a rule on the bus sends them to an SQS
queue, as a user's rule would send them to a queue, a Lambda function or an API destination."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from image_pipeline import ids
from image_pipeline.api.local_events import s3_notification
from tests.images import photo


@pytest.fixture
def events_env(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", moto_server)
    return moto_server


def _bus_to_queue(endpoint: str, bus: str) -> tuple[object, str]:
    events = boto3.client("events", endpoint_url=endpoint)
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    events.create_event_bus(Name=bus)
    queue_url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="image-events", EventBusName=bus, EventPattern=json.dumps({"source": ["image-pipeline"]}))
    events.put_targets(Rule="image-events", EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}])
    return sqs, queue_url


def _received(sqs, queue_url: str, expected: int) -> list[dict]:
    messages: list[dict] = []
    for _ in range(10):
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        messages += [json.loads(m["Body"]) for m in got]
        if len(messages) >= expected:
            break
    return messages


def _upload(
    s3, bucket: str, name: str, data: bytes, owner: str | None = None, tag: str | None = None
) -> tuple[str, dict]:
    """An upload as the API stores it: `raw/<id>/<name>`, the id carrying `tag` (the owner's by
    default), `x-amz-meta-owner` when there is an owner."""
    image_id = ids.new_id(tag=tag or (ids.owner_tag(owner) if owner else None))
    key = f"raw/{image_id}/{name}"
    metadata = {"owner": ids.owner_metadata(owner)} if owner else {}
    put = s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata)
    return image_id, s3_notification(bucket, key, put["ETag"].strip('"'), len(data))


def test_processed_and_rejected_images_each_publish_one_event(handler, settings_env, events_env, s3, bucket, context):
    bus = f"images-{uuid.uuid4().hex[:8]}"
    sqs, queue_url = _bus_to_queue(events_env, bus)
    settings_env(EVENT_BUS_NAME=bus)
    good_id, good = _upload(s3, bucket, "a.jpg", photo(640, 480))
    bad_id, bad = _upload(s3, bucket, "b.jpg", b"\xff\xd8\xff\xe0" + b"\x07" * 200)
    handler.lambda_handler(good, context)
    handler.lambda_handler(bad, context)

    events = {e["detail-type"]: e for e in _received(sqs, queue_url, 2)}
    assert set(events) == {"Image Processed", "Image Rejected"}
    processed = events["Image Processed"]
    assert processed["source"] == "image-pipeline"
    detail = processed["detail"]
    assert detail["id"] == good_id and detail["raw_key"] == f"raw/{good_id}/a.jpg" and detail["bucket"] == bucket
    assert detail["manifest_key"] == f"processed/{good_id}/a/manifest.json"
    assert detail["etag"] == s3.head_object(Bucket=bucket, Key=detail["raw_key"])["ETag"].strip('"')
    variants = {v["name"]: v for v in detail["variants"]}
    # The subject, as the manifest records it (a photo without faces: the attention centroid).
    assert detail["faces"] == [] and detail["focal_source"] == "attention"
    assert set(detail["focal_point"]) == {"x", "y"}
    assert (variants["medium"]["width"], variants["medium"]["height"]) == (640, 480)
    for variant in variants.values():  # every key named is really there, with the bytes stated
        head = s3.head_object(Bucket=bucket, Key=variant["key"])
        assert head["ContentLength"] == variant["bytes"] and head["ContentType"] == variant["content_type"]
    rejected = events["Image Rejected"]["detail"]
    assert (rejected["id"], rejected["error_code"]) == (bad_id, "corrupt_image")


def test_events_name_the_owner_the_upload_was_made_for(handler, settings_env, events_env, s3, bucket, context):
    bus = f"owners-{uuid.uuid4().hex[:8]}"
    sqs, queue_url = _bus_to_queue(events_env, bus)
    settings_env(EVENT_BUS_NAME=bus)
    owner = "zoë@example.com"  # not ASCII: percent-encoded in the metadata, itself in the event
    made = {
        "mine": _upload(s3, bucket, "a.jpg", photo(200, 100), owner=owner),
        "broken": _upload(s3, bucket, "b.jpg", b"\xff\xd8\xff\xe0" + b"\x07" * 200, owner=owner),
        "forged": _upload(s3, bucket, "c.jpg", photo(64, 64), owner=owner, tag=ids.owner_tag("mallory")),
        "nobody": _upload(s3, bucket, "d.jpg", photo(64, 64)),
    }
    for _, event in made.values():
        handler.lambda_handler(event, context)
    received = {e["detail"]["id"]: e for e in _received(sqs, queue_url, len(made))}
    owners = {
        name: (received[image_id]["detail-type"], received[image_id]["detail"]["owner"])
        for name, (image_id, _) in made.items()
    }
    assert owners == {
        "mine": ("Image Processed", owner),
        "broken": ("Image Rejected", owner),
        "forged": ("Image Processed", None),  # metadata naming someone whose tag is not in the id
        "nobody": ("Image Processed", None),
    }
    manifest = s3.get_object(Bucket=bucket, Key=f"processed/{made['mine'][0]}/a/manifest.json")["Body"].read()
    assert json.loads(manifest)["owner"] == owner


def test_a_failed_publish_is_retried_without_redoing_or_losing_the_outputs(
    handler, settings_env, events_env, s3, bucket, context
):
    bus = f"late-{uuid.uuid4().hex[:8]}"  # does not exist yet: PutEvents fails
    settings_env(EVENT_BUS_NAME=bus)
    image_id, event = _upload(s3, bucket, "c.jpg", photo(320, 240))
    with pytest.raises(handler.RetryLater):  # reported, so Lambda retries the event
        handler.lambda_handler(event, context)
    manifest_key = f"processed/{image_id}/c/manifest.json"
    first = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()  # outputs were kept
    outputs = {
        o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"processed/{image_id}/")["Contents"]
    }

    sqs, queue_url = _bus_to_queue(events_env, bus)  # the bus is back
    result = handler.lambda_handler(event, context)  # Lambda's retry
    assert result["results"][0]["status"] == "skipped"  # no image work the second time
    (received,) = _received(sqs, queue_url, 1)
    assert received["detail-type"] == "Image Processed" and received["detail"]["id"] == image_id
    assert s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read() == first
    again = {
        o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"processed/{image_id}/")["Contents"]
    }
    assert again == outputs


def test_no_bus_no_events_and_no_client(handler, settings_env, s3, bucket, context):
    runtime = settings_env()
    assert runtime.notifier is None
    _, event = _upload(s3, bucket, "d.jpg", photo(64, 64))
    assert handler.lambda_handler(event, context)["results"][0]["status"] == "processed"


def test_event_bus_name_is_validated_at_start_up():
    from image_pipeline.errors import ConfigError
    from image_pipeline.settings import Settings

    with pytest.raises(ConfigError, match="EVENT_BUS_NAME"):
        Settings.from_env({"EVENT_BUS_NAME": "bad bus name!"})
    assert Settings.from_env(
        {"EVENT_BUS_NAME": "arn:aws:events:eu-west-1:123456789012:event-bus/images"}
    ).event_bus_name


def test_lazy_variants_are_announced_as_not_made_yet(handler, settings_env, events_env, s3, bucket, context):
    bus = f"lazy-{uuid.uuid4().hex[:8]}"
    sqs, queue_url = _bus_to_queue(events_env, bus)
    settings_env(EVENT_BUS_NAME=bus, VARIANTS="thumbnail:150x150:cover:webp;xl:2400x2400:jpeg:lazy")
    image_id, event = _upload(s3, bucket, "a.jpg", photo(640, 480))
    handler.lambda_handler(event, context)

    (received,) = _received(sqs, queue_url, 1)
    detail = received["detail"]
    assert [v["name"] for v in detail["variants"]] == ["thumbnail"]
    assert detail["lazy_variants"] == [
        {"name": "xl", "key": f"processed/{image_id}/a/xl.jpg", "content_type": "image/jpeg", "made": False}
    ]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"processed/{image_id}/a/xl")
