"""Completion events: one EventBridge event per image, when EVENT_BUS_NAME is set.

    source       image-pipeline
    detail-type  Image Processed   {id, owner, bucket, raw_key, etag, manifest_key, variants: [{name,
                                     key, width, height, bytes, content_type}], lazy_variants:
                                     [{name, key, content_type, made: false}], placeholder}
                 Image Rejected    {id, owner, bucket, raw_key, error_code, reason}
                                   (error_code `moderated`: a reviewer rejected a held upload)
                 Image Held        {id, owner, bucket, raw_key, etag, reason, labels, scores,
                                     engine, moderation_key}: MODERATION flagged it (reason
                                     `flagged`) or gave no verdict (`moderation_unavailable`); nothing
                                     is published until a review approves it (then: Image Processed)

`owner` is whom the image belongs to (the uploader's token claim, see the API's OWNER_CLAIM, or
IAM principal), null for an upload without one.

`id` is the image id of an upload made through the API (`raw/<id>/<name>`), otherwise the raw key
without the raw prefix. Delivery is at least once: consumers key on (raw_key, etag).

Published after the outputs are written and the raw object marked; the Processed detail is read
back from the stored manifest, so it describes exactly what is in the bucket. A failed publish
(after botocore's retries) raises `PublishFailed`, a transient error: the handler reports the
record for a retry; the replay finds the manifest current, does no image work and writes nothing,
and publishes again. Outputs are never lost or written twice; the event may arrive twice.

aioboto3's EventBridge client is opened on the first publish, never at import: a function without
EVENT_BUS_NAME imports and opens nothing more.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from . import ids, keys
from .errors import PipelineError
from .moderation.gate import record_key as moderation_key

SOURCE = "image-pipeline"
PROCESSED = "Image Processed"
REJECTED = "Image Rejected"
HELD = "Image Held"


class PublishFailed(PipelineError):
    """The completion event could not be published; the record is retried (outputs are kept)."""

    code = "publish_error"
    permanent = False


class Notifier:
    def __init__(self, bus_name: str, *, raw_prefix: str, processed_prefix: str, max_attempts: int = 5) -> None:
        self.bus_name = bus_name
        self.raw_prefix = raw_prefix
        self.processed_prefix = processed_prefix
        self.max_attempts = max_attempts
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Notifier | None:
        bus = getattr(settings, "event_bus_name", None)
        if not bus:
            return None
        return cls(
            bus,
            raw_prefix=settings.raw_prefix,
            processed_prefix=settings.processed_prefix,
            max_attempts=settings.s3_max_attempts,
        )

    async def publish(self, store: Any, ref: Any, outcome: Any) -> dict | None:
        """Publish the event for one outcome (processed, skipped as already done, failed); the
        entry sent, or None when the outcome has nothing to announce (ignored, gone)."""
        entry = await self.entry(store, ref, outcome)
        if entry is None:
            return None
        await self._put(entry)
        return entry

    async def entry(self, store: Any, ref: Any, outcome: Any) -> dict | None:
        image_id = ids.id_of_key(ref.key, self.raw_prefix) or ref.key.removeprefix(self.raw_prefix)
        base = {"id": image_id, "bucket": ref.bucket, "raw_key": ref.key}
        if outcome.status == "failed":
            detail = {**base, "owner": outcome.owner, "error_code": outcome.error_code, "reason": outcome.reason}
            return self._entry(REJECTED, detail, ref)
        if outcome.status == "held":
            record = outcome.moderation or {}
            detail = {
                **base,
                "owner": outcome.owner,
                "etag": record.get("etag"),
                "reason": record.get("reason"),
                "labels": record.get("labels") or [],
                "scores": record.get("scores") or {},
                "engine": record.get("engine"),
                "moderation_key": moderation_key(ref.key, self.raw_prefix),
            }
            return self._entry(HELD, detail, ref)
        if outcome.status not in ("processed", "skipped"):
            return None
        prefix = keys.output_prefix(ref.key, self.raw_prefix, self.processed_prefix)
        if prefix is None:
            return None
        manifest_key = keys.manifest_key(prefix)
        stored = await store.read_optional(manifest_key)
        if not stored:
            return None
        record = json.loads(stored)
        if record["source"]["key"] != ref.key:
            return None
        detail = {
            **base,
            "owner": record.get("owner"),  # manifests written before owners have none
            "etag": record["source"]["etag"],
            "manifest_key": manifest_key,
            "source": {k: record["source"].get(k) for k in ("type", "width", "height", "bytes")},
            "placeholder": record.get("placeholder"),
            # The subject (manifests written before faces have none of these): faces, the focal
            # point `auto` crops keep, and what it is ("faces", "attention" or "manual").
            "faces": record.get("faces") or [],
            "focal_point": record.get("focal_point"),
            "focal_source": record.get("focal_source"),
            "variants": [
                {k: v[k] for k in ("name", "key", "width", "height", "bytes", "content_type")}
                for v in record["variants"]
            ],
            # Made on their first request (VARIANTS `lazy`): not there yet when the image is processed.
            "lazy_variants": [
                {"name": v["name"], "key": v["key"], "content_type": v.get("content_type"), "made": False}
                for v in record.get("lazy_variants") or ()
            ],
        }
        return self._entry(PROCESSED, detail, ref)

    def _entry(self, detail_type: str, detail: dict, ref: Any) -> dict:
        return {
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail, separators=(",", ":")),
            "Resources": [f"arn:aws:s3:::{ref.bucket}/{ref.key}"],
            "EventBusName": self.bus_name,
        }

    async def _put(self, entry: dict) -> None:
        from aiohttp import ClientError as HttpError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = await self._open()
            response = await client.put_events(Entries=[entry])
        except (BotoCoreError, ClientError, HttpError, OSError) as exc:
            raise PublishFailed(f"PutEvents to {self.bus_name} failed: {exc}") from exc
        if response.get("FailedEntryCount"):
            failed = response["Entries"][0]
            raise PublishFailed(
                f"PutEvents to {self.bus_name} refused the event: "
                f"{failed.get('ErrorCode')} {failed.get('ErrorMessage')}"
            )

    async def _open(self) -> Any:
        if self._client is None:
            import aioboto3
            from aiobotocore.config import AioConfig

            stack = contextlib.AsyncExitStack()
            config = AioConfig(
                retries={"mode": "standard", "total_max_attempts": self.max_attempts},
                connect_timeout=5,
                read_timeout=10,
            )
            self._client = await stack.enter_async_context(aioboto3.Session().client("events", config=config))
            self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._client = self._stack = None
