"""Review of held uploads (MODERATION): the queue and the decisions, for the images:admin scope.

    GET  /images?status=held           the held images, newest first, a page at a time, each with a
                                       short-lived preview link (list_images hands over to `held_page`)
    POST /images/{id}/review           {"decision": "approve" | "reject"}
    GET  /review/preview               the preview link's target on a storage backend (signed)
    GET  /review                       the review page (pages.py: static/review.html, review.js)

The API routes are in `routes` (app.py adds them to `ROUTES`); the page is one of pages.py's.

Who may decide: only a caller with the admin scope (API_AUTH=open: everyone, as for every route).
Another owner's id is the usual 404; the owner of a held image, without the scope, gets 403: they
may see that it is held (GET /images/{id} says `held`), not decide about it.

Answers: approve → 200 with the image (processed, as if it had passed; `Image Processed`); reject →
200 `{"status": "rejected"}` (the upload and everything of it deleted; `Image Rejected`, error_code
`moderated`). The same decision again answers as the first did; the other decision on an image
already decided, or any decision on an image never held, is 409; a body without a valid decision
400 (nothing is changed).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody

from .. import ids
from ..errors import PipelineError
from ..moderation import gate as moderation
from ..processor.sniff import content_type
from ..service import ObjectRef, ReviewConflict
from ..storage import ObjectNotFound
from .backends import StorageBackend
from .guards import api_of, authenticated, caller_of, own_id
from .problems import not_found, problem

# app.py imports this module (its route list, list_images' `?status=held`), so the helpers it
# shares are taken from where app.py takes them (guards: the caller and the route's Api).
AUTHENTICATED = [authenticated]


PREVIEW_EXPIRY_S = 300  # a preview link's life (at most URL_EXPIRY_SECONDS)
QUEUE_SCAN = 10_000  # held images ordered at once (newest first across owners); beyond it, key order


@dataclass
class HeldImage:
    id: str
    name: str
    reason: str  # flagged | moderation_unavailable
    labels: list[str]
    scores: dict[str, float]
    engine: str | None
    held_at: str | None
    created_at: str
    preview_url: str  # short-lived: the upload itself (a presigned GET, or a signed local link)
    review_url: str  # POST {"decision": "approve" | "reject"} here


@dataclass
class HeldPage:
    items: list[HeldImage]
    next_cursor: str | None


@dataclass
class ReviewDecision:
    decision: str


@dataclass
class ReviewAnswer:
    id: str
    decision: str  # approve | reject
    status: str  # processed (approved and published) | rejected
    decided_at: str | None
    decided_by: str | None
    status_url: str  # GET: the image (approve: processed, with its variants; reject: 404)


def _admin(request: Request) -> None:
    if not caller_of(request).admin:
        scope = api_of(request).settings.admin_scope
        raise problem(403, f"reviewing held images needs the {scope} scope")


async def held_page(request: Request, status: str, cursor: str | None, limit: int) -> HeldPage:
    """`GET /images?status=held`: the review queue, newest first (across owners)."""
    if status != "held":
        raise problem(400, "status must be held (the review queue); leave it out for the caller's images")
    _admin(request)
    api = api_of(request)
    raw_prefix = api.settings.pipeline.raw_prefix
    found: list[tuple[int, str, str]] = []  # (created ms, id, marker key)
    after: str | None = None
    while len(found) < QUEUE_SCAN:
        page = await api.store.list(moderation.HELD, start_after=after, limit=1000)
        for listed in page:
            image_id = ids.id_of_key(moderation.raw_key_of(listed.key, raw_prefix), raw_prefix)
            if image_id is not None:
                found.append((ids.created_ms(image_id), image_id, listed.key))
        if len(page) < 1000:
            break
        after = page[-1].key
    found.sort(key=lambda f: (-f[0], f[1]))
    if cursor is not None:
        if not ids.is_valid(cursor):
            raise problem(400, "cursor must be the next_cursor of a previous page")
        position = (-ids.created_ms(cursor), cursor)
        found = [f for f in found if (-f[0], f[1]) > position]
    chosen, more = found[:limit], len(found) > limit
    base = api.base(request)
    items = await asyncio.gather(*(_held(request, base, image_id, key) for _, image_id, key in chosen))
    return HeldPage([i for i in items if i is not None], chosen[-1][1] if more and chosen else None)


async def _held(request: Request, base: str, image_id: str, marker_key: str) -> HeldImage | None:
    api = api_of(request)
    record = moderation.parse(await api.store.read_optional(marker_key))
    if record is None:
        return None
    from datetime import UTC, datetime

    raw_key = record["key"]
    return HeldImage(
        id=image_id,
        name=raw_key.rpartition("/")[2],
        reason=str(record.get("reason") or moderation.FLAGGED),
        labels=list(record.get("labels") or []),
        scores=dict(record.get("scores") or {}),
        engine=record.get("engine"),
        held_at=record.get("held_at"),
        created_at=datetime.fromtimestamp(ids.created_ms(image_id) / 1000, UTC).isoformat(timespec="seconds"),
        preview_url=await preview_url(request, base, raw_key),
        review_url=f"{base}images/{image_id}/review",
    )


async def preview_url(request: Request, base: str, raw_key: str) -> str:
    """A short-lived link to the held upload: S3's presigned GET, or this API's signed local link."""
    api = api_of(request)
    expires = min(PREVIEW_EXPIRY_S, api.settings.url_expiry_s)
    backend = api.backend
    if isinstance(backend, StorageBackend):
        until = int(time.time()) + expires
        signature = _sign(backend, raw_key, until)
        return f"{base}review/preview?key={quote(raw_key, safe='')}&expires={until}&sig={signature}"
    return await backend.object_url(raw_key, expires, base)


def _sign(backend: StorageBackend, key: str, until: int) -> str:
    return hmac.new(backend._secret, f"preview\n{key}\n{until}".encode(), hashlib.sha256).hexdigest()


@get("/review/preview", summary="A held upload's preview (storage backends only)", include_in_schema=False)
async def review_preview(
    request: Request,
    key: FromQuery[str],
    expires: FromQuery[int],
    sig: FromQuery[str],
) -> Response[bytes]:
    """The signed link `preview_url` makes when the images are not on S3 (a directory, any
    litestar-storages storage): the link is the permission (like a presigned GET), for a held
    upload only, until it expires."""
    api = api_of(request)
    backend = api.backend
    if not isinstance(backend, StorageBackend) or expires < time.time():
        raise NotFoundException()
    if not hmac.compare_digest(_sign(backend, key, expires), sig):
        raise NotFoundException()
    data = await api.store.read_optional(key)
    if data is None:
        raise NotFoundException()
    return Response(data, media_type=content_type(data), headers={"Cache-Control": "private, no-store"})


@post(
    "/images/{image_id:str}/review",
    status_code=200,
    summary="Approve or reject a held image (images:admin scope)",
    guards=AUTHENTICATED,
)
async def review_image(request: Request, image_id: FromPath[str], data: JSONBody[Any]) -> ReviewAnswer:
    api = api_of(request)
    image_id = own_id(request, image_id)  # another owner's: 404
    _admin(request)
    decision = data.get("decision") if isinstance(data, dict) else None
    if decision not in ("approve", "reject"):
        raise problem(400, 'the body must be {"decision": "approve"} or {"decision": "reject"}')
    if api.service.gate is None:
        raise problem(409, "moderation is off (MODERATION=off): no image is held")
    raws = await api.store.list(api.raw_dir(image_id), limit=1)
    raw_key = raws[0].key if raws else await _decided_key(api, image_id)
    if raw_key is None:
        raise not_found()
    caller = caller_of(request)
    try:
        reviewed = await api.service.review(api.store, api.backend.bucket, raw_key, decision, caller.owner)
    except ReviewConflict as exc:
        raise problem(409, str(exc)) from None
    except (ObjectNotFound, PipelineError) as exc:
        raise problem(503, "storage failed, try again", getattr(exc, "code", None)) from None
    if api.notifier is not None:
        await api.notifier.publish(api.store, ObjectRef(api.backend.bucket, raw_key), reviewed.outcome)
    record = reviewed.record
    return ReviewAnswer(
        id=image_id,
        decision=decision,
        status="processed" if decision == "approve" else "rejected",
        decided_at=record.get("decided_at"),
        decided_by=record.get("decided_by"),
        status_url=f"{api.base(request)}images/{image_id}",
    )


async def _decided_key(api: Any, image_id: str) -> str | None:
    """The raw key of a rejected image (its upload is gone; its record says what it was)."""
    prefix = moderation.RECORDS + image_id + "/"
    listed = await api.store.list(prefix, limit=1)
    return moderation.raw_key_of(listed[0].key, api.settings.pipeline.raw_prefix) if listed else None


routes = [review_image, review_preview]  # app.py: in ROUTES
