"""The CDN miss function's work, one request at a time, over one container's runtime: see
`lambda_function.py` for where it sits and what it answers."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import parse_qs, unquote

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from ..errors import ConfigError, ImageRejected, PipelineError
from ..runtime import Runtime
from ..settings import Settings
from ..storage import ObjectNotFound
from . import BadOutput, Forbidden, OnDemand, OnDemandSettings, Wanted, is_width_leaf

INLINE_MAX = 4 * 1024 * 1024  # raw bytes; base64 makes 5.3 MB, under the 6 MB response limit

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "image-pipeline-ondemand"))
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImagePipeline"),
    service=os.environ.get("POWERTOOLS_SERVICE_NAME", "image-pipeline-ondemand"),
)


class NotFound(Exception):
    """Nothing this function makes lives at that path."""


class MissFunction:
    """The function's work for one request, over one container's runtime (settings, loop, client)."""

    def __init__(self, runtime: Runtime, ondemand: OnDemand, bucket: str) -> None:
        if not bucket:
            raise ConfigError("BUCKET_NAME must name the bucket the outputs are made in")
        self.runtime, self.ondemand, self.bucket = runtime, ondemand, bucket
        service = runtime.service
        self.eager = {v.name for v in service.processor.variants} | (
            {"original"} if service.processor.preserve_original else set()
        )

    @classmethod
    def from_env(cls) -> MissFunction:
        runtime = Runtime(Settings.from_env())
        return cls(
            runtime, OnDemand(runtime.service, OnDemandSettings.from_env()), os.environ.get("BUCKET_NAME", "").strip()
        )

    def __call__(self, event: dict, context: Any) -> dict:
        http = event.get("requestContext", {}).get("http", {})
        method = http.get("method", "GET")
        raw_path = event.get("rawPath") or "/"
        sig = parse_qs(event.get("rawQueryString") or "").get("sig", [None])[0]
        logger.append_keys(path=raw_path)
        if method not in ("GET", "HEAD"):
            return _problem(405, "only GET and HEAD", headers={"Allow": "GET, HEAD"})
        try:
            prefix, leaf = self._split(raw_path)
            wanted = self._wanted(leaf, raw_path, sig)  # 400/403 here: before any storage call
            remaining = context.get_remaining_time_in_millis() if context is not None else None
            reserve = min(self.runtime.settings.time_reserve_ms, 2000)
            timeout = None if remaining is None else (remaining - reserve) / 1000
            made = self.runtime.run(lambda: self._make(prefix, wanted, leaf), timeout, what=raw_path)
        except BadOutput as exc:
            return _problem(400, str(exc), cache="public, max-age=300")
        except Forbidden as exc:  # never cached: the cache key has no `sig`, a signed request may follow
            return _problem(403, str(exc))
        except (NotFound, ObjectNotFound):
            return _problem(404, "no such image or output")
        except ImageRejected as exc:
            logger.warning("output refused", extra={"error_code": exc.code, "error": exc.message})
            return _problem(422, exc.message, exc.code)
        except PipelineError as exc:  # storage_error, out_of_time, busy: worth a retry
            logger.error("output not made; retry", extra={"error_code": exc.code, "error": exc.message})
            return _problem(503, "the output could not be made now; try again", exc.code, headers={"Retry-After": "2"})
        logger.info(
            "output made" if made.made else "output already stored", extra={"key": made.key, "bytes": len(made.data)}
        )
        if made.made:
            metrics.add_metric(name="OutputsMadeOnDemand", unit=MetricUnit.Count, value=1)
        if len(made.data) > INLINE_MAX:  # stored: the bucket answers the same path from now on
            return {"statusCode": 302, "headers": {"Location": raw_path, "Cache-Control": "no-store"}, "body": ""}
        headers = {
            "Content-Type": made.content_type,
            "Cache-Control": self.runtime.settings.cache_control,
            "Content-Length": str(len(made.data)),
        }
        if method == "HEAD":
            return {"statusCode": 200, "headers": headers, "body": ""}
        return {
            "statusCode": 200,
            "headers": headers,
            "body": base64.b64encode(made.data).decode("ascii"),
            "isBase64Encoded": True,
        }

    def _split(self, raw_path: str) -> tuple[str, str]:
        """`/processed/<path>/<leaf>` → (`processed/<path>/`, leaf); anything else is not ours."""
        key = unquote(raw_path).lstrip("/")
        prefix, _, leaf = key.rpartition("/")
        prefix += "/"
        processed = self.runtime.settings.processed_prefix
        segments = prefix[len(processed) :].split("/")[:-1]
        if (
            not key.startswith(processed)
            or not leaf
            or not segments
            or any(s in ("", ".", "..") for s in segments)
            or any(ord(c) < 32 or ord(c) == 127 for c in key)
        ):
            raise NotFound(raw_path)
        return prefix, leaf

    def _wanted(self, leaf: str, raw_path: str, sig: str | None) -> Wanted:
        name = leaf.partition(".")[0]
        if name in self.eager:  # made on upload (`wide.webp` still being processed): never here, never a 400
            raise NotFound(leaf)
        wanted = self.ondemand.wanted_lazy(name, leaf=leaf)  # a lazy variant, `xl.jpg`
        if wanted is not None:
            return wanted
        if is_width_leaf(leaf):  # already negotiated by the CloudFront Function: w640.avif / .webp / w640
            return self.ondemand.wanted_width(self.ondemand.width(leaf, raw_path, sig))
        raise NotFound(leaf)

    async def _make(self, prefix: str, wanted: Wanted, leaf: str):
        # The CDN came here because the bucket had no such key; it may have been made since (a
        # concurrent first request, or a cached 403/404): look before making.
        store = await self.runtime.store(self.bucket)
        return await self.ondemand.get(store, prefix, wanted, leaf, look_first=True)

    def close(self) -> None:
        self.runtime.close()


def _problem(
    status: int, detail: str, code: str | None = None, *, cache: str = "no-store", headers: dict | None = None
) -> dict:
    body = {"status": status, "title": _TITLES.get(status, "Error"), "detail": detail}
    if code:
        body["error_code"] = code
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/problem+json", "Cache-Control": cache, **(headers or {})},
        "body": json.dumps(body),
    }


_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}
