"""Event shapes → `ObjectRef`s, through Powertools' data classes.

Accepted: S3 notifications (every record; keys are URL-encoded with `+` for space and Powertools
decodes none of them past the first record's `object_key`, so each is `unquote_plus`-ed here),
EventBridge "Object Created", SQS messages whose body is either (or S3's test event), Lambda
on-failure destination records (for replays), and S3 Batch Operations tasks (see `handler`).

`ObjectCreated:*` / "Object Created" name an upload (`kind="created"`); `ObjectRemoved:*` / "Object
Deleted" by a `DeleteObject` call name a deleted raw object (`kind="removed"`, no ETag or size in
these events). An S3 Lifecycle expiration (EventBridge reason "Lifecycle Expiration"; S3 sends
those as `LifecycleExpiration:*`, which the templates do not subscribe to) is not a removal: the
raw object's retention ran out and its outputs stay.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event, S3EventBridgeNotificationEvent

from .service import ObjectRef

_S3_KINDS = {"ObjectCreated": "created", "ObjectRemoved": "removed"}


class UnknownEvent(ValueError):
    """The event is none of the shapes above."""


def is_batch_operation(event: object) -> bool:
    """An S3 Batch Operations task (a backfill job over existing objects)."""
    return isinstance(event, dict) and "invocationSchemaVersion" in event and "tasks" in event


def is_sqs(event: object) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    if not records:
        return False
    return isinstance(records[0], dict) and records[0].get("eventSource") == "aws:sqs"


def object_refs(event: dict) -> list[ObjectRef]:
    """Every object an S3 notification or EventBridge event names (SQS: see `refs_from_body`)."""
    if not isinstance(event, dict):
        raise UnknownEvent(f"event is a {type(event).__name__}, not an object")
    if isinstance(event.get("requestPayload"), dict):
        return object_refs(event["requestPayload"])  # a Lambda on-failure destination record (redrive)
    if event.get("source") == "aws.s3" and "detail" in event:
        detail = S3EventBridgeNotificationEvent(event).detail
        if event.get("detail-type") == "Object Deleted" and detail.reason == "DeleteObject":
            return [ObjectRef(detail.bucket.name, detail.object.key, kind="removed")]
        if event.get("detail-type") != "Object Created":
            return []
        return [ObjectRef(detail.bucket.name, detail.object.key, detail.object.etag or None, detail.object.size)]
    if isinstance(event.get("Records"), list):
        refs = []
        for record in S3Event(event).records:
            kind = _S3_KINDS.get(record.event_name.partition(":")[0])
            if record.get("eventSource") != "aws:s3" or kind is None:
                continue
            obj = record.s3.get_object
            if kind == "removed":
                refs.append(ObjectRef(record.s3.bucket.name, unquote_plus(obj.key), kind=kind))
            else:
                refs.append(ObjectRef(record.s3.bucket.name, unquote_plus(obj.key), obj.etag or None, obj.get("size")))
        return refs
    if event.get("Event") == "s3:TestEvent":
        return []
    raise UnknownEvent("not an S3 notification, EventBridge S3 event or SQS message")


def refs_from_body(body: str) -> list[ObjectRef]:
    """The objects named by one SQS message body."""
    try:
        payload = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise UnknownEvent(f"SQS message body is not JSON: {exc}") from None
    if isinstance(payload, dict) and payload.get("Type") == "Notification" and "Message" in payload:
        return refs_from_body(payload["Message"])  # S3 → SNS → SQS
    return object_refs(payload)


def every_ref(event: dict) -> list[ObjectRef]:
    """Every object any accepted event names, flattened (for local tools; the handler keeps the
    per-shape replies: batch item failures, Batch Operations results)."""
    if is_batch_operation(event):
        from aws_lambda_powertools.utilities.data_classes import S3BatchOperationEvent

        return [ObjectRef(task.s3_bucket, task.s3_key) for task in S3BatchOperationEvent(event).tasks]
    if is_sqs(event):
        return [ref for record in event["Records"] for ref in refs_from_body(record["body"])]
    return object_refs(event)
