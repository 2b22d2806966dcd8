"""URLs the API hands out. Never built from the request's Host header (which a DNS-rebinding page
or a proxy chooses): from PUBLIC_URL when it is set, otherwise as paths (`/images/<id>`) that a
client resolves against the URL it called. Object keys are percent-encoded segment by segment, so
a key holding `%2e%2e/`, `?`, `#` or a `..` segment names that object and nothing else."""

from __future__ import annotations

from urllib.parse import quote

from litestar import Request

_SEGMENT_SAFE = "!$&'()*+,;=:@"  # RFC 3986 pchar besides unreserved: kept readable, meaning the same


def key_path(key: str) -> str:
    """`key` as a URL path: every segment percent-encoded, `/` kept, `.`/`..` segments encoded so
    that no browser or CDN resolves them."""
    segments = []
    for segment in key.split("/"):
        encoded = quote(segment, safe=_SEGMENT_SAFE)
        segments.append(encoded.replace(".", "%2E") if segment in (".", "..") else encoded)
    return "/".join(segments)


def object_link(base: str, key: str) -> str:
    """An object's URL under a base that ends with `/` (PUBLIC_BASE_URL, the API's `files/`)."""
    return base + key_path(key)


def api_base(request: Request, public_url: str | None) -> str:
    """Where the API's own links start: PUBLIC_URL, or the path the app is mounted at."""
    if public_url:
        return public_url
    return str(request.scope.get("root_path") or "").rstrip("/") + "/"
