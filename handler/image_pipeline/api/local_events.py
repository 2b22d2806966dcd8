"""A local stand-in for S3 → Lambda notifications: poll `raw/` with ListObjectsV2 and deliver an
S3 `ObjectCreated:Post` notification for every new or replaced object to the real
`lambda_handler`, so an upload made locally is processed exactly as on AWS (same event shape,
same handler, same retries: an object reported for a retry is delivered again later)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from urllib.parse import quote_plus

log = logging.getLogger("image_pipeline.local_events")


def s3_notification(bucket: str, key: str, etag: str, size: int) -> dict:
    """The S3 notification S3 sends for a browser's presigned POST (keys URL-encoded as S3 does)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "eventName": "ObjectCreated:Post",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag},
                },
            }
        ]
    }


class LocalEventSource:
    """A thread that polls the bucket's raw prefix and invokes the handler per new object."""

    def __init__(self, endpoint_url: str, bucket: str, raw_prefix: str = "raw/", interval_s: float = 0.25) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.raw_prefix = raw_prefix
        self.interval_s = interval_s
        self.delivered = 0
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-s3-events", daemon=True)

    def start(self) -> LocalEventSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def poll_once(self, s3, handler) -> int:
        """Deliver what is new since the last poll; the number of events delivered."""
        from ..lambda_context import LocalContext

        delivered = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.raw_prefix):
            for item in page.get("Contents", []):
                key, etag = item["Key"], item["ETag"].strip('"')
                if self._seen.get(key) == etag:
                    continue
                try:
                    handler(s3_notification(self.bucket, key, etag, item["Size"]), LocalContext())
                    self._seen[key] = etag
                except Exception as exc:  # noqa: BLE001 - RetryLater or a bug: delivered again on a later poll, as Lambda retries
                    log.warning("delivery of %s will be retried: %s", key, exc)
                delivered += 1
        # Deleted objects may come back under the same key with the same bytes: forget them.
        return delivered

    def _run(self) -> None:
        import boto3

        from ..handler import lambda_handler  # after the endpoint is in the environment: cold start

        s3 = boto3.client("s3", endpoint_url=self.endpoint_url)
        while not self._stop.is_set():
            try:
                self.delivered += self.poll_once(s3, lambda_handler)
            except Exception:
                log.exception("polling s3://%s/%s failed", self.bucket, self.raw_prefix)
            self._stop.wait(self.interval_s)
