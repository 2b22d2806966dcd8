"""The CDN's miss function: CloudFront → this function's URL, only when the bucket has no such
output yet.

With `Cdn=true` the distribution's `processed/*` requests go to an origin group: the bucket first
(Origin Access Control), and on its 403/404 this function's URL (`AuthType: AWS_IAM`, reached only
through CloudFront's own Origin Access Control of type `lambda`). A CloudFront Function has already
mapped a negotiated `…/w640` (`…/w640-16x9`) onto `w640.avif`, `w640.webp` or the fallback `w640`
by `Accept`. Here the path names the output (`/processed/<image prefix>/<leaf>`), the `sig` query
parameter authorises widths and ratios outside the allowlists, and `OnDemand` makes it, stores it and returns it; every
later request is served by CloudFront and S3 without invoking anything.

Responses: 200 with the bytes (base64; at most INLINE_MAX bytes of image, so the encoded body stays
under Lambda's 6 MB buffered limit), or for a larger output a 302 back to the same path, which the
bucket now answers; 400 a malformed width URL, 403 a width that needs a signature, 404 no such
image or variant (never processed, rejected, or another output name), 405 another method, 422 a
size the limits refuse, 503 (Retry-After) when S3 failed or time ran out. Errors are
`application/problem+json` with the pipeline's `error_code`, and `Cache-Control: no-store` except
400 (a malformed path stays malformed: `max-age=300`): the distribution caches no 403/404/5xx
(ErrorCachingMinTTL 0), so a refusal never outlives what could change it (a signature, the end of
processing).
"""

from __future__ import annotations

from typing import Any

from .miss import MissFunction, logger, metrics

miss = MissFunction.from_env()  # cold start: bad settings fail here, naming every problem


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict, context: Any) -> dict:
    return miss(event, context)
