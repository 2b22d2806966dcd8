"""The upload API's routes, their bodies and what they share (`Api`).

The routes are mounted by `ImagePipelinePlugin` (plugin.py) on a Litestar `Router` at the
plugin's path; `create_app` (server.py) is one app with the plugin at `/`. A route finds its
`Api` with `api_of(request)` (the router's `opt`, see guards.py), never in `app.state`. A new
route is a handler added to `ROUTES` at the end of this module.

Every route validates what it is given (id pattern, declared type and size, sniffed bytes)
before any storage call, answers bad input with an RFC 9457 problem (`application/problem+json`,
with `error_code` where the pipeline has one) and leaves nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import MediaType, Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException, NotFoundException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, JSONBody, MultipartBody, Parameter
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.response import Redirect
from litestar.types import ASGIApp, ControllerRouterHandler, ExceptionHandlersMap, Receive, Scope, Send

from .. import ids, keys
from ..errors import Busy, ImageRejected, OutOfTime, PipelineError, StorageFailure
from ..faces import detector_for
from ..moderation import gate_from
from ..notify import Notifier
from ..ondemand import BadOutput, Forbidden, OnDemand, Wanted, is_width_leaf
from ..ondemand.paths import fallback_format, negotiate
from ..pool import ProcessingPool
from ..processor import ImageProcessor
from ..processor.sniff import DECODABLE, content_type, sniff
from ..service import ERROR_TAG, STATUS_TAG, ImageService, ObjectRef
from ..storage import ListedObject, ObjectNotFound
from . import pages, review
from .auth import Authenticator, Caller, Identity
from .backends import Backend, StorageBackend, UploadRefused
from .delivery import signer_for
from .guards import api_in, authenticated, caller_of, own_id
from .links import api_base, mount_path, object_link, page_base
from .problems import not_found, problem
from .settings import EXTENSIONS, ApiSettings

log = logging.getLogger("image_pipeline.api")

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields, beside the file itself
MAX_PAGE = 100
LIST_PAGE = 1000  # keys per listing request (S3's maximum)
ONDEMAND_BUDGET_S = 25.0  # an output made in a request: within API Gateway's 29 s, like an upload's


# --- bodies (also the OpenAPI schema) -------------------------------------------------------


@dataclass
class UploadRequest:
    filename: str
    content_type: str
    size: int


@dataclass
class UploadForm:
    url: str
    fields: dict[str, str]


@dataclass
class UploadGrant:
    id: str
    upload: UploadForm
    status_url: str
    expires_at: str


@dataclass
class VariantInfo:
    name: str
    url: str  # stable: the API's /images/{id}/{variant} redirect, or PUBLIC_BASE_URL + key
    src: str  # for showing it now without a token: a direct (possibly presigned, short-lived) URL
    width: int
    height: int
    bytes: int
    content_type: str


@dataclass
class LazyVariantInfo:
    """A variant made on its first request (`lazy` in VARIANTS)."""

    name: str
    url: str  # the API's /images/{id}/{name} (makes it when missing), or PUBLIC_BASE_URL + key (the CDN's)
    made: bool  # stored already
    content_type: str


@dataclass
class WidthUrls:
    """Sizes on demand for this image: `template` with `{width}` and `{ext}` filled in (ext one of
    avif, webp, and `fallback`: jpg, or png where the image has alpha) gives a width URL; `widths`
    are the allowlisted ones up to the image's own width (wider ones give the same pixels)."""

    template: str
    widths: list[int]
    fallback: str


@dataclass
class RatioUrls:
    """Aspect ratios on demand: `template` with `{width}`, `{ratio}` (one of `ratios`, e.g. `16x9`)
    and `{ext}` (avif, webp or `fallback`) gives the largest window of that ratio around the
    image's subject, that wide. `widths` are the allowlisted ones up to the image's own width; a
    width above a ratio's window (`windows[ratio]`, its full-size width and height) gives the
    window's own width (never upscaled)."""

    template: str
    ratios: list[str]
    widths: list[int]
    fallback: str
    windows: dict[str, list[int]]


@dataclass
class ImageInfo:
    id: str
    status: str  # pending | processed | failed | held (MODERATION: waiting for a review, nothing published)
    name: str  # the uploaded file's (sanitised) name
    error_code: str | None
    source: dict[str, Any] | None
    placeholder: dict[str, Any] | None
    variants: list[VariantInfo]
    created_at: str
    lazy_variants: list[LazyVariantInfo] | None = None
    width_urls: WidthUrls | None = None
    # The subject (processed images): faces found ({x, y, w, h, score}, 0–1 from the top-left),
    # the focal point every `auto` crop keeps ({x, y}) and where it came from: faces, attention
    # (the saliency centroid) or manual (PUT /images/{id}/focal).
    faces: list[dict[str, float]] | None = None
    focal_point: dict[str, float] | None = None
    focal_source: str | None = None
    ratio_urls: RatioUrls | None = None


@dataclass
class ImagePage:
    items: list[ImageInfo]
    next_cursor: str | None  # pass as ?cursor= for the next page; None on the last


@dataclass
class JobAccepted:
    job_id: str
    status_url: str


# --- what the routes share ------------------------------------------------------------------


class Api:
    """Settings, storage backend, who the caller is, and the pipeline's service, for the app's
    life: one per plugin (per mount), found by its routes with `api_of(request)`.

    `identity` says who a request is for (`Authenticator`: API_AUTH's JWT/IAM/open; or the app's
    own `owner=`, `auth.OwnerIdentity`); `mount` is the router's path ("" at `/`); `gallery`
    whether listings answer on an open API and `/api/gallery` answers at all (None: GALLERY)."""

    def __init__(
        self,
        settings: ApiSettings,
        backend: Backend,
        *,
        identity: Identity | None = None,
        mount: str = "",
        gallery: bool | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.auth: Identity = identity if identity is not None else Authenticator(settings)
        self.mount = mount_path(mount)
        self.gallery = gallery
        pipeline = settings.pipeline
        processor = ImageProcessor(
            pipeline.variants,
            limits=pipeline.limits,
            keep_icc_profile=pipeline.keep_icc_profile,
            face_detector=detector_for(pipeline.face_detection),  # the engine's own imports wait for its first image
        )
        self.service = ImageService(
            processor,
            raw_prefix=pipeline.raw_prefix,
            processed_prefix=pipeline.processed_prefix,
            disposition=pipeline.raw_disposition,
            # The process's image slots (uploads, the local worker, the local event source's
            # handler): at most PROCESS_CONCURRENCY at once; beyond it, 503 busy after PROCESS_WAIT_MS.
            pool=ProcessingPool.of_process(pipeline.process_concurrency, wait_s=pipeline.process_wait_ms / 1000),
            gate=gate_from(pipeline),  # MODERATION: the same gate as on Lambda (review.py: the review routes)
        )
        self.notifier = Notifier.from_settings(pipeline)  # review decisions' events (EVENT_BUS_NAME)
        self.ondemand = OnDemand(self.service, settings.ondemand)
        self.signer = signer_for(settings)  # DELIVERY=private: CDN links signed (api/delivery.py)

    def __deepcopy__(self, memo: dict) -> Api:
        """One for the app's life: Litestar deep-copies a router (and its `opt`) as it registers
        it; the routes must share this one (its clients, queue and slots), not copies."""
        return self

    @property
    def store(self) -> Any:
        """The backend's `ObjectStore` (an attribute of the backend, so a test may wrap it)."""
        return self.backend.store

    @property
    def is_open(self) -> bool:
        """API_AUTH=open: no owners, every caller may act on every image."""
        return isinstance(self.auth, Authenticator) and self.settings.auth == "open"

    @property
    def gallery_enabled(self) -> bool:
        return pages.GALLERY_ENABLED if self.gallery is None else self.gallery

    def raw_dir(self, image_id: str) -> str:
        return f"{self.settings.pipeline.raw_prefix}{image_id}/"

    def output_dir(self, image_id: str) -> str:
        return f"{self.settings.pipeline.processed_prefix}{image_id}/"

    async def manifest(self, image_id: str) -> tuple[dict | None, list[str]]:
        """The image's manifest (None before it is processed) and every key under its outputs."""
        listed = await self.store.list(self.output_dir(image_id), limit=1000)
        output_keys = [o.key for o in listed]
        for key in output_keys:
            if key.endswith("/" + keys.MANIFEST_NAME):
                raw = await self.store.read_optional(key)
                if raw:
                    try:
                        return json.loads(raw), output_keys
                    except ValueError:
                        pass
        return None, output_keys

    def base(self, request: Request) -> str:
        """Where the API's own links start (PUBLIC_URL or the mount path; never the Host)."""
        return api_base(request, self.settings.public_url, self.mount)

    def page_base(self, request: Request) -> str:
        """The mount's path on this server (the page's `<base href>`)."""
        return page_base(request, self.mount)

    async def describe(self, request: Request, image_id: str) -> ImageInfo | None:
        """Status from storage alone: manifest → processed; raw tagged failed → failed; raw → pending."""
        raws, (record, listed) = await asyncio.gather(
            self.store.list(self.raw_dir(image_id), limit=1), self.manifest(image_id)
        )
        return await self.info(request, image_id, raws[0] if raws else None, record, set(listed))

    async def info(
        self,
        request: Request,
        image_id: str,
        raw: ListedObject | None,
        record: dict | None,
        stored: set[str] | None = None,
    ) -> ImageInfo | None:
        """An image's body from its raw object and manifest (None when neither is there)."""
        created = datetime.fromtimestamp(ids.created_ms(image_id) / 1000, UTC).isoformat(timespec="seconds")
        base = self.base(request)
        if record is not None and (
            raw is None or (record["source"]["key"] == raw.key and record["source"]["etag"] == raw.etag)
        ):
            variants = [
                VariantInfo(
                    name=v["name"],
                    url=self.variant_link(image_id, v, base),
                    src=await self.variant_src(v, base),
                    width=v["width"],
                    height=v["height"],
                    bytes=v["bytes"],
                    content_type=v["content_type"],
                )
                for v in record["variants"]
            ]
            name = _leaf(record["source"]["key"])
            return ImageInfo(
                image_id,
                "processed",
                name,
                None,
                record["source"],
                record.get("placeholder"),
                variants,
                created,
                lazy_variants=self.lazy_info(image_id, record, base, stored),
                width_urls=self.width_urls(image_id, record, base),
                **self.subject(image_id, record, base),
            )
        if raw is None:
            return None
        tags = await self.store.get_tags(raw.key)
        source = {"key": raw.key, "etag": raw.etag, "bytes": raw.size}
        if tags.get(STATUS_TAG) == "failed":
            return ImageInfo(
                image_id, "failed", _leaf(raw.key), tags.get(ERROR_TAG, "unknown"), source, None, [], created
            )
        if tags.get(STATUS_TAG) == "held":  # error_code: moderation_unavailable when no engine answered
            return ImageInfo(image_id, "held", _leaf(raw.key), tags.get(ERROR_TAG), source, None, [], created)
        return ImageInfo(image_id, "pending", _leaf(raw.key), None, source, None, [], created)

    def lazy_info(self, image_id: str, record: dict, base: str, stored: set[str] | None) -> list[LazyVariantInfo]:
        """The manifest's lazy variants; `made` from the listing (`stored`) when there is one."""
        return [
            LazyVariantInfo(
                name=v["name"],
                url=self.variant_link(image_id, v, base),
                made=stored is not None and v["key"] in stored,
                content_type=v.get("content_type", ""),
            )
            for v in record.get("lazy_variants") or ()
            if isinstance(v, dict) and "name" in v and "key" in v
        ]

    def width_urls(self, image_id: str, record: dict, base: str) -> WidthUrls:
        """Where this image's width URLs are: the CDN (PUBLIC_BASE_URL + its output prefix, made on a
        miss there) or the API's /images/{id}/w{width}.{ext}."""
        source = record["source"]
        prefix = self.service.output_prefix(str(source["key"]))
        if self.settings.public_base_url and prefix:
            template = object_link(self.settings.public_base_url, prefix) + "w{width}.{ext}"
            if self.signer is not None:  # one signature for every width and format of this image
                template = self.signer.sign_template(template)
        else:
            template = f"{base}images/{image_id}/w{{width}}.{{ext}}"
        width = int(source.get("width") or 0)
        widths = [w for w in self.ondemand.widths if w <= width]
        return WidthUrls(template=template, widths=widths, fallback=fallback_format(source).extension)

    def subject(self, image_id: str, record: dict, base: str) -> dict[str, Any]:
        """The manifest's subject (faces, focal point and its source) and the ratio URLs' ladder."""
        width_urls = self.width_urls(image_id, record, base)
        source = record["source"]
        size = int(source.get("width") or 0), int(source.get("height") or 0)
        # each ratio's full-size window: the largest output that ratio's URLs give (wider ones are the same)
        windows = {str(r): list(r.size(size[0], *size)) for r in self.ondemand.ratios}
        return {
            **pages.subject_fields(record),
            "ratio_urls": RatioUrls(
                template=width_urls.template.replace("w{width}.{ext}", "w{width}-{ratio}.{ext}"),
                ratios=list(windows),
                widths=width_urls.widths,
                fallback=width_urls.fallback,
                windows=windows,
            ),
        }

    def variant_link(self, image_id: str, variant: dict, base: str) -> str:
        """The variant's stable URL: PUBLIC_BASE_URL + key (public, cacheable; signed and expiring with
        DELIVERY=private), or the API's redirect."""
        if self.settings.public_base_url:
            return self.cdn_link(variant["key"])
        return f"{base}images/{image_id}/{variant['name']}"

    async def variant_src(self, variant: dict, base: str) -> str:
        """A URL to show the variant now, no token needed: the CDN's (signed with DELIVERY=private)
        or a short-lived presigned GET."""
        if self.settings.public_base_url:
            return self.cdn_link(variant["key"])
        return await self.backend.object_url(variant["key"], self.settings.url_expiry_s, base)

    def cdn_link(self, key: str) -> str:
        """PUBLIC_BASE_URL + key: as it is, or with DELIVERY=private a CloudFront signed URL."""
        assert self.settings.public_base_url is not None
        url = object_link(self.settings.public_base_url, key)
        return url if self.signer is None else self.signer.sign(url)

    async def store_upload(self, upload: UploadFile, caller: Caller) -> tuple[str, str]:
        """Check a multipart file (size while reading, type from its bytes), then store it under
        `raw/<new id>/<leaf>`, the caller's id and owner metadata. Nothing is stored when it is refused."""
        limit = self.settings.max_bytes
        data = await upload.read(limit + 1)  # one copy (chunks + join held two at once)
        if len(data) > limit:
            raise problem(413, f"the file is over the {limit}-byte limit", "too_large")
        if not data:
            raise problem(400, "the file is empty", "empty_file")
        kind = sniff(data)
        if kind not in DECODABLE or kind not in self.settings.pipeline.limits.allowed_types:
            allowed = ", ".join(sorted(self.settings.pipeline.limits.allowed_types))
            raise problem(
                415, f"the file is {kind or 'not an image we recognise'}; accepted: {allowed}", "unsupported_type"
            )
        image_id = ids.new_id(tag=caller.tag)
        key = ids.raw_key(self.settings.pipeline.raw_prefix, image_id, upload.filename or "", EXTENSIONS[kind])
        await self.store.write(key, data, DECODABLE[kind][1], metadata_for(caller))
        return image_id, key

    async def page(self, request: Request, caller: Caller, after: str | None, limit: int) -> ImagePage:
        """The caller's images (every image for an admin), newest first: the ids under
        `raw/<tag>-` and `processed/<tag>-` merged (delete mode removes raw objects once processed),
        one LIST per 1000 keys, then one GET per image shown (its manifest, or a pending upload's tags)."""
        pipeline = self.settings.pipeline
        scope = "" if caller.admin else f"{caller.tag}-"
        raws = _ids_under(self.store, pipeline.raw_prefix, scope, after)
        outputs = _ids_under(self.store, pipeline.processed_prefix, scope, after)
        found: list[tuple[str, list[ListedObject], list[ListedObject]]] = []
        raw, out = await anext(raws, None), await anext(outputs, None)
        while (raw or out) and len(found) <= limit:
            if out is None or (raw is not None and raw[0] < out[0]):
                assert raw is not None  # the loop's condition: raw or out
                found.append((raw[0], raw[1], []))
                raw = await anext(raws, None)
            elif raw is None or out[0] < raw[0]:
                found.append((out[0], [], out[1]))
                out = await anext(outputs, None)
            else:
                found.append((raw[0], raw[1], out[1]))
                raw, out = await anext(raws, None), await anext(outputs, None)
        await asyncio.gather(raws.aclose(), outputs.aclose())
        more = len(found) > limit
        found = found[:limit]

        async def item(image_id: str, raw_objects: list[ListedObject], output_objects: list[ListedObject]):
            manifest_key = next((o.key for o in output_objects if o.key.endswith("/" + keys.MANIFEST_NAME)), None)
            body = await self.store.read_optional(manifest_key) if manifest_key else None
            try:
                record = json.loads(body) if body else None
            except ValueError:
                record = None
            return await self.info(request, image_id, raw_objects[0] if raw_objects else None, record)

        items = [i for i in await asyncio.gather(*(item(*f) for f in found)) if i is not None]
        return ImagePage(items=items, next_cursor=found[-1][0] if more and found else None)


async def _ids_under(
    store, base: str, scope: str, after: str | None
) -> AsyncGenerator[tuple[str, list[ListedObject]], None]:
    """(id, its objects) for every API id under `base` + `scope` (`raw/<tag>-`…), in key order
    (newest first), after the id `after`. Keys that are not an API id's are passed over."""
    start = f"{base}{after}0" if after else None  # "0" sorts after every "<id>/…" key of that id
    current: str | None = None
    objects: list[ListedObject] = []
    while True:
        page = await store.list(base + scope, start_after=start, limit=LIST_PAGE)
        for listed in page:
            image_id = ids.id_of_key(listed.key, base)
            if image_id is None:
                continue
            if image_id != current:
                if current is not None:
                    yield current, objects
                current, objects = image_id, []
            objects.append(listed)
        if len(page) < LIST_PAGE:
            break
        start = page[-1].key
    if current is not None:
        yield current, objects


def _leaf(key: str) -> str:
    return key.rpartition("/")[2]


def metadata_for(caller: Caller) -> dict[str, str]:
    """The raw object's metadata for an upload by `caller`: `owner`, when there is one."""
    return {ids.OWNER_METADATA: ids.owner_metadata(caller.owner)} if caller.owner is not None else {}


def api_of(connection: ASGIConnection) -> Api:
    """The Api of the plugin whose router holds the request's route."""
    api: Api = api_in(connection.route_handler)
    return api


AUTHENTICATED = [authenticated]


# --- routes ---------------------------------------------------------------------------------


@post("/uploads", status_code=201, summary="Start a direct upload (presigned POST)", guards=AUTHENTICATED)
async def create_upload(request: Request, data: JSONBody[UploadRequest]) -> UploadGrant:
    """A presigned POST for one image: the form must be sent to `upload.url` with every field of
    `upload.fields` and the file last, within `expires_at`. The policy pins the key
    (`raw/<id>/<sanitised file name>`, the id carrying the caller's owner tag), the owner
    (`x-amz-meta-owner`), caps the size at MAX_INPUT_BYTES and requires an `image/` Content-Type."""
    api = api_of(request)
    caller = caller_of(request)
    if api.settings.image_type(data.content_type) is None:
        allowed = ", ".join(sorted(api.settings.pipeline.limits.allowed_types))
        raise problem(415, f"{data.content_type!r} is not an accepted image type ({allowed})", "unsupported_type")
    if data.size > api.settings.max_bytes:
        raise problem(413, f"{data.size} bytes is over the {api.settings.max_bytes}-byte limit", "too_large")
    if data.size < 1:
        raise problem(400, "size must be at least 1 byte", "empty_file")
    image_id = ids.new_id(tag=caller.tag)
    kind = api.settings.image_type(data.content_type)
    assert kind is not None  # checked above
    key = ids.raw_key(api.settings.pipeline.raw_prefix, image_id, data.filename, EXTENSIONS[kind])
    base = api.base(request)
    expires = api.settings.upload_expiry_s
    form = await api.backend.presign_upload(
        key, data.content_type.split(";")[0].strip(), api.settings.max_bytes, expires, base, metadata_for(caller)
    )
    expires_at = datetime.fromtimestamp(datetime.now(UTC).timestamp() + expires, UTC)
    return UploadGrant(
        id=image_id,
        upload=UploadForm(url=form["url"], fields=form["fields"]),
        status_url=f"{base}images/{image_id}",
        expires_at=expires_at.isoformat(timespec="seconds"),
    )


@post(
    "/uploads/local",
    status_code=204,
    summary="Receive a local upload form (filesystem backend only)",
    include_in_schema=False,
)
async def receive_local_upload(request: Request, data: MultipartBody[dict[str, Any]]) -> None:
    """Where `POST /uploads` points the browser when the images live in a directory: the same
    form S3 would receive, checked against the policy this server signed (no token: like S3's
    presigned POST, the signed form is the permission)."""
    api = api_of(request)
    backend = api.backend
    if not isinstance(backend, StorageBackend):
        raise NotFoundException()
    try:
        policy = backend.check_policy(data)
    except UploadRefused as exc:
        raise problem(403, str(exc)) from None
    except (ValueError, KeyError, TypeError):
        raise problem(403, "the upload form is not signed by this server") from None
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        raise problem(400, "the form has no file part (send the image as a file, with a filename)")
    body = await upload.read(policy["max_bytes"] + 1)
    if len(body) > policy["max_bytes"]:
        raise problem(413, f"the file is over the {policy['max_bytes']}-byte limit", "too_large")
    if not body:
        raise problem(400, "the file is empty", "empty_file")
    await api.store.write(policy["key"], body, str(data["Content-Type"]), policy.get("metadata") or {})
    backend.uploaded(policy["key"])


@get("/images", summary="The caller's images, newest first, a page at a time", guards=AUTHENTICATED)
async def list_images(
    request: Request,
    cursor: str | None = Parameter(default=None, description="next_cursor of the previous page"),
    limit: int = Parameter(default=24, ge=1, le=MAX_PAGE),
    status: str | None = Parameter(default=None, description="held: the review queue (images:admin scope)"),
) -> ImagePage | review.HeldPage:
    """Pending, processed and failed images the caller owns (an admin: every image made through
    the API). Each item is the `GET /images/{id}` body. `?status=held`: see review.py."""
    api = api_of(request)
    caller = caller_of(request)
    if status is not None:
        return await review.held_page(request, status, cursor, limit)  # the review queue (MODERATION)
    if api.is_open and not api.gallery_enabled:
        raise problem(
            404,
            "listing is off on an open API: it would hand anyone every id (set GALLERY=true on a "
            "private network, or use API_AUTH=jwt)",
        )
    if cursor is not None:
        parsed = ids.parse(cursor)
        if parsed is None or not (caller.admin or parsed[0] == caller.tag):
            raise problem(400, "cursor must be the next_cursor of a previous page")
    return await api.page(request, caller, cursor, limit)


@get("/images/{image_id:str}", summary="An image's status, source, placeholder and variants", guards=AUTHENTICATED)
async def get_image(request: Request, image_id: FromPath[str]) -> ImageInfo:
    api = api_of(request)
    info = await api.describe(request, own_id(request, image_id))
    if info is None:
        raise not_found()
    return info


@get(
    "/images/jobs/{job_id:str}",
    summary="A background job's status (same body as GET /images/{id})",
    guards=AUTHENTICATED,
)
async def get_job(request: Request, job_id: FromPath[str]) -> ImageInfo:
    return await get_image.fn(request, job_id)


@get(
    "/images/{image_id:str}/{variant:str}",
    status_code=302,
    summary="Redirect to a variant's bytes (made on first request for width URLs and lazy variants)",
    guards=AUTHENTICATED,
)
async def get_variant(request: Request, image_id: FromPath[str], variant: FromPath[str]) -> Redirect:
    """A configured variant (`medium`), a lazy one (`xl`: made on its first request), or a width
    URL: `w640.webp` (`jpg`, `webp`, `avif`, `png`), or `w640` with the format negotiated from
    `Accept` (AVIF, else WebP, else JPEG, or PNG where the image has alpha; the answer varies on
    Accept). Widths outside ONDEMAND_WIDTHS need `?sig=` (`image-pipeline sign`). A width above the
    image's own gives the image's own width (never upscaled). Outputs made here are stored under
    the image's output prefix; later requests find them with one listing and do no image work."""
    api = api_of(request)
    image_id = own_id(request, image_id)
    wanted, vary = None, False
    if is_width_leaf(variant):  # 400 / 403 here, before any storage call
        try:
            width = api.ondemand.width(variant, request.url.path, request.query_params.get("sig"))
        except BadOutput as exc:
            raise problem(400, str(exc)) from None
        except Forbidden as exc:
            raise problem(403, str(exc)) from None
        vary = width.format is None
        wanted = api.ondemand.wanted_width(width, negotiate(request.headers.get("accept")) if vary else None)
    headers = {"Cache-Control": "private, max-age=60", **({"Vary": "Accept"} if vary else {})}
    listed = await api.store.list(api.output_dir(image_id), limit=LIST_PAGE)
    stored = {o.key for o in listed}
    manifest_key = next((k for k in sorted(stored) if k.endswith("/" + keys.MANIFEST_NAME)), None)
    if manifest_key is None:
        raise problem(404, "no such image or variant")
    prefix = manifest_key[: -len(keys.MANIFEST_NAME)]
    if wanted is None:
        record = await _record(api, manifest_key)
        found = next((v for v in record.get("variants", []) if v["name"] == variant), None)
        if found is not None:
            return Redirect(await api.variant_src(found, api.base(request)), status_code=302, headers=headers)
        lazy = next((v for v in record.get("lazy_variants") or () if v.get("name") == variant), None)
        if lazy is None or not api.ondemand.is_lazy(variant):
            raise problem(404, "no such image or variant")
        wanted = api.ondemand.wanted_lazy(variant, leaf=lazy["key"][len(prefix) :])
    if wanted is None:  # is_lazy said it was a lazy variant's name
        raise problem(404, "no such image or variant")
    key = prefix + wanted.leaf
    if key not in stored:
        await _make(api, prefix, wanted)
    url = await api.variant_src({"key": key}, api.base(request))
    return Redirect(url, status_code=302, headers=headers)


async def _record(api: Api, manifest_key: str) -> dict:
    body = await api.store.read_optional(manifest_key)
    try:
        record = json.loads(body) if body else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise problem(404, "no such image or variant")
    return record


async def _make(api: Api, prefix: str, wanted: Wanted) -> None:
    """Make an output in the request, under the process's image slots and a time budget."""
    try:
        async with asyncio.timeout(ONDEMAND_BUDGET_S):
            await api.ondemand.get(api.store, prefix, wanted)
    except TimeoutError:
        raise problem(
            503,
            f"the output was not made within {ONDEMAND_BUDGET_S:.0f} s; try again",
            OutOfTime.code,
            headers={"Retry-After": "5"},
        ) from None
    except ObjectNotFound:  # the image went away meanwhile, or its upload is no longer there (delete mode)
        raise problem(404, "no such image or variant: its upload is not there to make it from") from None
    except ImageRejected as exc:
        raise problem(422, exc.message, exc.code) from None


@get("/files/{key:path}", summary="A processed file (filesystem backend only)", include_in_schema=False)
async def get_file(request: Request, key: FromPath[str]) -> Response[bytes]:
    """Delivery, public by design like a CDN: outputs only (never `raw/`), no token."""
    api = api_of(request)
    key = key.lstrip("/")
    if not isinstance(api.backend, StorageBackend) or not key.startswith(api.settings.pipeline.processed_prefix):
        raise NotFoundException()
    if any(part in ("", ".", "..") for part in key.split("/")) or "\x00" in key:
        raise NotFoundException()
    data = await api.store.read_optional(key)
    if data is None:
        raise NotFoundException()
    return Response(data, media_type=content_type(data), headers={"Cache-Control": api.settings.pipeline.cache_control})


async def _multipart_file(data: dict[str, Any]) -> UploadFile:
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        raise problem(400, "send the image as the multipart file part 'file' (with a filename)")
    return upload


class ImageSlot:
    """Route middleware with the `image_slot` guard: one of the process's image slots
    (`Api.service.pool`) is taken after the caller is authenticated and before the request's body
    is read, so uploads beyond PROCESS_CONCURRENCY wait unread (in the socket, not in memory) and,
    after PROCESS_WAIT_MS, get 503 `busy` with nothing read or stored. The image work inside the
    request runs in this slot; the middleware gives it back when the request is done, however it
    ends (a guard has no way out of its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with contextlib.AsyncExitStack() as held:
            scope.setdefault("state", {})[_SLOT] = held
            await self.app(scope, receive, send)


_SLOT = "image_pipeline.image_slot"


async def image_slot(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """The last guard of a route that processes an image in the request (see `ImageSlot`). A
    refused body is drained (read and dropped, up to the request size limit) first, so the client,
    still sending, reads the 503."""
    api = api_of(connection)
    held = connection.scope["state"][_SLOT]
    try:
        await held.enter_async_context(api.service.pool.reserve())
    except Busy:
        left = api.settings.max_bytes + FORM_OVERHEAD
        while left > 0:
            message = await connection.receive()
            body = message.get("body", b"")
            left -= len(body) if isinstance(body, bytes) else 0
            if not message.get("more_body"):
                break
        raise


@post(
    "/images",
    status_code=201,
    summary="Upload and process an image in the request",
    guards=[*AUTHENTICATED, image_slot],
    middleware=[ImageSlot],
)
async def upload_image(request: Request, data: MultipartBody[dict[str, Any]]) -> ImageInfo:
    """Multipart field `file`. Refused before anything is stored when too large (413) or not an
    accepted image type judged from its bytes (415); a file that fails to decode is removed
    again and answered 422 with the pipeline's error code. When PROCESS_CONCURRENCY images are
    already being processed and none finishes within PROCESS_WAIT_MS: 503 `busy` with
    Retry-After, nothing stored."""
    api = api_of(request)
    image_id, key = await api.store_upload(await _multipart_file(data), caller_of(request))
    try:
        outcome = await api.service.handle(api.store, ObjectRef(api.backend.bucket, key))
    except PipelineError as exc:
        log.warning("POST /images: %s failed: %s", key, exc)
        raise problem(503, "storage failed, try again", exc.code) from None
    if outcome.status == "failed":
        await api.service.remove(api.store, key, delete_raw=True)
        raise problem(422, outcome.reason, outcome.error_code)
    info = await api.describe(request, image_id)
    assert info is not None
    return info


@post("/images/async", status_code=202, summary="Upload an image; process it in the background", guards=AUTHENTICATED)
async def upload_image_async(request: Request, data: MultipartBody[dict[str, Any]]) -> JobAccepted:
    api = api_of(request)
    image_id, key = await api.store_upload(await _multipart_file(data), caller_of(request))
    api.backend.uploaded(key)
    return JobAccepted(job_id=image_id, status_url=f"{api.base(request)}images/jobs/{image_id}")


@delete(
    "/images/{image_id:str}",
    status_code=204,
    summary="Delete an image: its upload and every output",
    guards=AUTHENTICATED,
)
async def delete_image(request: Request, image_id: FromPath[str]) -> None:
    api = api_of(request)
    own_id(request, image_id)
    raws, (record, outputs) = await asyncio.gather(
        api.store.list(api.raw_dir(image_id), limit=10), api.manifest(image_id)
    )
    if not raws and not outputs:
        raise not_found()
    raw_keys = [r.key for r in raws] or ([record["source"]["key"]] if record else [])
    for raw_key in raw_keys:
        await api.service.remove(api.store, raw_key, delete_raw=True)
    # The id's output prefix belongs to this image alone: sweep what no manifest listed, manifest last.
    left = [o.key for o in await api.store.list(api.output_dir(image_id), limit=1000)]
    for key in sorted(left, key=lambda k: k.endswith("/" + keys.MANIFEST_NAME)):
        await api.store.delete(key)


@delete("/images/{image_id:str}/{variant:str}", status_code=204, include_in_schema=False, guards=AUTHENTICATED)
async def delete_nested(image_id: FromPath[str], variant: FromPath[str]) -> None:
    """An id with a `/` in it: no such image (not 405), like every other malformed id."""
    raise not_found()


@get("/healthz", summary="Liveness", include_in_schema=False, media_type=MediaType.TEXT)
async def healthz() -> str:
    return "ok"


# --- errors, scoped to the API's router ----------------------------------------------------


def _body_too_large(exc: RequestEntityTooLarge) -> ProblemDetailsException:
    """Litestar stops reading a body over `request_max_body_size` as it streams in."""
    return problem(413, "the request body is over the upload limit", "too_large")


def _storage_failure(request: Request, exc: StorageFailure) -> Response:
    """Logged in full; answered without the bucket, key or endpoint it names."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return problem(503, "storage failed, try again", exc.code).to_response(request)


def _undecodable_form(request: Request, exc: UnicodeDecodeError) -> Response:
    """Litestar decodes a multipart part without a filename (`filename=""`, none, or only the
    RFC 5987 `filename*=`) as UTF-8 text: image bytes there raise UnicodeDecodeError while the
    body is parsed. That is the client's form, not our failure."""
    if request.content_type[0] == "multipart/form-data":
        return problem(
            400,
            "a form part without a filename must be text: send the image as a file part "
            '(Content-Disposition: form-data; name="file"; filename="photo.jpg")',
        ).to_response(request)
    log.exception("%s %s failed", request.method, request.url.path)
    return ProblemDetailsException(status_code=500, detail="Internal Server Error").to_response(request)


def _busy(request: Request, exc: Busy) -> Response:
    return ProblemDetailsException(
        detail=exc.message,
        status_code=503,
        extra={"error_code": exc.code},
        headers={"Retry-After": str(exc.retry_after_s)},
    ).to_response(request)


def _problem(request: Request, exc: ProblemDetailsException) -> Response:
    return exc.to_response(request)


def _http_problem(request: Request, exc: HTTPException) -> Response:
    """Every other HTTP error of the API's routes (validation, guards) as problem details too."""
    return ProblemDetailsException(
        status_code=exc.status_code, title=exc.detail, extra=exc.extra, headers=exc.headers
    ).to_response(request)


def _too_large(request: Request, exc: RequestEntityTooLarge) -> Response:
    return _body_too_large(exc).to_response(request)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ProblemDetailsException: _problem,
    HTTPException: _http_problem,
    RequestEntityTooLarge: _too_large,
    StorageFailure: _storage_failure,
    UnicodeDecodeError: _undecodable_form,
    Busy: _busy,
}


# --- the routes the plugin mounts: a new route is one more handler here ----------------------

ROUTES: list[ControllerRouterHandler] = [
    create_upload,
    receive_local_upload,
    list_images,
    get_image,
    get_job,
    get_variant,
    get_file,
    upload_image,
    upload_image_async,
    delete_image,
    delete_nested,
    *review.routes,  # MODERATION: the review queue's decisions and previews
]
