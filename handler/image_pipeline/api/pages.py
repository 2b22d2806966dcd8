"""The web page: `/` (upload and look at the results), `/gallery` (a contact sheet of the caller's
processed images, newest first; an admin's or an open API's: everything under `processed/`),
`/review` (MODERATION: the held uploads, for the images:admin scope; its routes are review.py's),
their static files, and the gallery's JSON (`/api/gallery`).

The page is plain HTML, JS and CSS from `static/` (package data; no build step). It uses only the
API's own endpoints (`POST /uploads`, the presigned form, `GET /images/{id}`) plus `/api/gallery`,
which pages through the manifests under `processed/<owner tag>-` with the store contract's `list`
(one ListObjectsV2 page per 1000 keys on S3; the filesystem backend lists its directory) and reads
the page's manifests. The pages send the bearer token the user gave them (static/auth.js).

Every URL the pages use is relative to their `<base href>`, set to the mount's path when they are
served: at `/` (`create_app`) or under a plugin's path (`ImagePipelinePlugin(page=True)`) alike.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.params import Parameter
from litestar.static_files import create_static_files_router

from .. import ids, keys
from ..errors import ConfigError
from .guards import api_of, authenticated, caller_of
from .problems import problem

STATIC = Path(__file__).resolve().parent / "static"
MAX_PAGE = 100
LIST_PAGE = 1000  # keys per listing request (S3's maximum)
_REVALIDATE = CacheControlHeader(no_cache=True)  # the page changes with the package: always revalidate


def gallery_setting(env) -> bool:
    """GALLERY (default false; `serve` turns it on): whether `/api/gallery` answers. Off, ids stay
    unlisted there: on an open API a listing would hand anyone every id (and so every image, and
    its DELETE). With owners it lists the caller's own images (an admin's: every one)."""
    raw = env.get("GALLERY", "").strip().lower()
    if raw in ("", "false", "off", "0", "no"):
        return False
    if raw in ("true", "on", "1", "yes"):
        return True
    raise ConfigError(f"GALLERY={raw!r} must be true or false")


GALLERY_ENABLED = gallery_setting(os.environ)  # read once, when the app is first imported


@dataclass
class GalleryVariant:
    name: str
    url: str  # stable: the API's /images/{id}/{variant} redirect, or PUBLIC_BASE_URL + key
    src: str  # for showing it now: a direct (possibly presigned, short-lived) URL
    width: int
    height: int
    bytes: int
    content_type: str


@dataclass
class GalleryItem:
    id: str | None  # None for outputs of raw keys not uploaded through the API (e.g. a backfill)
    key: str  # the manifest's key
    name: str  # the raw object's file name
    status: str
    error_code: str | None
    source: dict[str, Any]
    placeholder: dict[str, Any] | None
    variants: list[GalleryVariant]
    processed_at: str | None
    # The subject, as `GET /images/{id}` gives it: faces found, the focal point and its source.
    faces: list[dict[str, float]] | None = None
    focal_point: dict[str, float] | None = None
    focal_source: str | None = None


@dataclass
class GalleryPage:
    items: list[GalleryItem]
    next_cursor: str | None  # pass as ?cursor= for the next page; None on the last


_CHARSET = b'<meta charset="utf-8">'


def _html(request: Request, name: str) -> Response[bytes]:
    """The page with its `<base href>`: the mount's path, so its relative URLs (static files, the
    API's routes) resolve under the mount whether it is asked for with a trailing `/` or not."""
    base = html.escape(api_of(request).page_base(request), quote=True).encode()
    page = (STATIC / name).read_bytes().replace(_CHARSET, _CHARSET + b'\n  <base href="' + base + b'">', 1)
    return Response(page, media_type=MediaType.HTML)


@get("/", include_in_schema=False, cache_control=_REVALIDATE)
async def upload_page(request: Request) -> Response[bytes]:
    return _html(request, "index.html")


@get("/gallery", include_in_schema=False, cache_control=_REVALIDATE)
async def gallery_page(request: Request) -> Response[bytes]:
    return _html(request, "gallery.html")


@get("/review", include_in_schema=False, cache_control=_REVALIDATE)
async def review_page(request: Request) -> Response[bytes]:
    """The review page (MODERATION, review.py): held cards, preview, Approve / Reject. The queue it
    loads answers 403 without the admin scope, and the page says so."""
    return _html(request, "review.html")


async def _manifest_keys(store, prefix: str, after: str | None, wanted: int) -> list[str]:
    """Up to `wanted` manifest keys under `prefix` after `after`, in key order (newest first for
    API uploads, whose ids sort that way)."""
    found: list[str] = []
    while len(found) < wanted:
        page = await store.list(prefix, start_after=after, limit=LIST_PAGE)
        found += [o.key for o in page if o.key.endswith("/" + keys.MANIFEST_NAME)]
        if len(page) < LIST_PAGE:
            break
        after = page[-1].key
    return found[:wanted]


@get(
    "/api/gallery",
    summary="The caller's processed images, newest first, a page at a time (for /gallery)",
    guards=[authenticated],
)
async def gallery(
    request: Request,
    cursor: str | None = Parameter(default=None, description="next_cursor of the previous page"),
    limit: int = Parameter(default=24, ge=1, le=MAX_PAGE),
) -> GalleryPage:
    api = api_of(request)
    if not api.gallery_enabled:
        raise problem(404, "the gallery is off: set GALLERY=true to list processed images")
    caller = caller_of(request)
    processed = api.settings.pipeline.processed_prefix
    prefix = processed if caller.admin else f"{processed}{caller.tag}-"
    if cursor is not None and (
        not cursor.startswith(prefix)
        or not cursor.endswith("/" + keys.MANIFEST_NAME)
        or len(cursor.encode("utf-8", "surrogatepass")) > keys.MAX_KEY_BYTES
        or any(ord(c) < 32 or ord(c) == 127 for c in cursor)
    ):
        raise problem(400, "cursor must be the next_cursor of a previous page")
    manifest_keys = await _manifest_keys(api.store, prefix, cursor, limit + 1)
    more = len(manifest_keys) > limit
    manifest_keys = manifest_keys[:limit]
    bodies = await asyncio.gather(*(api.store.read_optional(k) for k in manifest_keys))
    base = api.base(request)
    items = [
        item
        for key, body in zip(manifest_keys, bodies, strict=True)
        if (item := await _item(api, key, body, processed, base)) is not None
    ]
    return GalleryPage(items=items, next_cursor=manifest_keys[-1] if more else None)


async def _item(api, key: str, body: bytes | None, prefix: str, base: str) -> GalleryItem | None:
    """A manifest as the card shows it; None when it went away or cannot be read."""
    try:
        record = json.loads(body) if body else None
        if not isinstance(record, dict):
            return None
        source, variants = record["source"], record["variants"]
    except (ValueError, KeyError, TypeError):
        return None
    # An API upload's raw key is raw/<id>/<leaf>, so its outputs are processed/<id>/<stem>/.
    image_id = ids.id_of_key(str(source.get("key", "")), api.settings.pipeline.raw_prefix)
    if image_id is not None and not key.startswith(f"{prefix}{image_id}/"):
        image_id = None
    shown = []
    for v in variants:
        direct = await api.variant_src(v, base)
        stable = api.variant_link(image_id, v, base) if image_id else direct
        shown.append(GalleryVariant(v["name"], stable, direct, v["width"], v["height"], v["bytes"], v["content_type"]))
    return GalleryItem(
        id=image_id,
        key=key,
        name=str(source.get("key", "")).rpartition("/")[2],
        status="processed",
        error_code=None,
        source=source,
        placeholder=record.get("placeholder"),
        variants=shown,
        processed_at=record.get("processed_at"),
        **subject_fields(record),
    )


def subject_fields(record: dict) -> dict[str, Any]:
    """The manifest's subject as the card shows it (manifests before faces: the attention centroid)."""
    focal = record.get("focal_point")
    return {
        "faces": record.get("faces") or [],
        "focal_point": focal if isinstance(focal, dict) else None,
        "focal_source": record.get("focal_source") or ("attention" if isinstance(focal, dict) else None),
    }


routes: list = [
    upload_page,
    gallery_page,
    review_page,
    gallery,
    create_static_files_router(path="/static", directories=[STATIC], cache_control=_REVALIDATE),
]
