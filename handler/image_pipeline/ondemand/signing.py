"""Signed on-demand URLs: an HMAC-SHA256 with SIGNING_KEY over the URL's path.

Widths in the allowlist (`ONDEMAND_WIDTHS`) work unsigned; any other needs `?sig=`. What is
signed is the path without the output's format extension (`/images/<id>/w641` for
`/images/<id>/w641.webp`): a signature authorises a size of one image, and the format stays the
browser's choice (the CDN rewrites `w641` to `w641.avif` by `Accept` before the request reaches
the function). The signature is needed to *create* an output, never to read one that exists.

    sig = base64url(HMAC-SHA256(SIGNING_KEY, path without extension)), no padding (43 characters)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit

PARAM = "sig"


def _signed_part(path: str) -> str:
    head, slash, leaf = path.rpartition("/")
    return f"{head}{slash}{leaf.partition('.')[0]}"


def signature(key: bytes, path: str) -> str:
    digest = hmac.new(key, _signed_part(path).encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(key: bytes, path: str, sig: str | None) -> bool:
    """Whether `sig` is the signature of `path` (constant time)."""
    if not sig or not key:
        return False
    return hmac.compare_digest(signature(key, path).encode("ascii"), sig.encode("ascii", "replace"))


def sign(key: bytes, path_or_url: str) -> str:
    """`path_or_url` with `sig=` added to its query (a path stays a path, a URL a URL)."""
    parts = urlsplit(path_or_url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith(PARAM + "="))
    query = f"{query}&{PARAM}={signature(key, parts.path)}" if query else f"{PARAM}={signature(key, parts.path)}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
