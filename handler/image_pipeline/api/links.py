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


def mount_path(path: str) -> str:
    """A plugin's `path` as the prefix of its routes: "" for "/", "/images" for "images/"."""
    return "/" + path.strip("/") if path.strip("/") else ""


def page_base(request: Request, mount: str = "") -> str:
    """The path the API's routes start at on this server: the ASGI root path + the mount, with `/`."""
    return str(request.scope.get("root_path") or "").rstrip("/") + mount + "/"


def api_base(request: Request, public_url: str | None, mount: str = "") -> str:
    """Where the API's own links start: PUBLIC_URL (the app's external base URL) + the mount, or
    the path the app is mounted at + the mount."""
    if public_url:
        return public_url + (mount.lstrip("/") + "/" if mount else "")
    return page_base(request, mount)
