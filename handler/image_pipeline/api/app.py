"""The Litestar app: routes, lifespan, problem details, OpenAPI (`/schema`).

Every route validates what it is given (id pattern, declared type and size, sniffed bytes)
before any storage call, answers bad input with an RFC 9457 problem (`application/problem+json`,
with `error_code` where the pipeline has one) and leaves nothing stored.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.config.cors import CORSConfig
from litestar.datastructures import UploadFile
from litestar.exceptions import NotFoundException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.config import OpenAPIConfig
from litestar.params import FromPath, JSONBody, MultipartBody
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from litestar.response import Redirect
from litestar.types import ASGIApp, Receive, Scope, Send

from .. import __version__, ids, keys
from ..errors import Busy, PipelineError, StorageFailure
from ..pool import ProcessingPool, return_freed_memory
from ..processor import ImageProcessor
from ..processor.sniff import DECODABLE, sniff
from ..service import ERROR_TAG, STATUS_TAG, ImageService, ObjectRef
from . import pages
from .backends import FileBackend, S3Backend, UploadRefused
from .settings import EXTENSIONS, ApiSettings

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields, beside the file itself


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
    url: str
    width: int
    height: int
    bytes: int
    content_type: str


@dataclass
class ImageInfo:
    id: str
    status: str  # pending | processed | failed
    error_code: str | None
    source: dict[str, Any] | None
    placeholder: dict[str, Any] | None
    variants: list[VariantInfo]
    created_at: str


@dataclass
class JobAccepted:
    job_id: str
    status_url: str


# --- what the routes share ------------------------------------------------------------------


class Api:
    """Settings, storage backend and the pipeline's service, for the app's life."""

    def __init__(self, settings: ApiSettings, backend: S3Backend | FileBackend) -> None:
        self.settings = settings
        self.backend = backend
        pipeline = settings.pipeline
        processor = ImageProcessor(pipeline.variants, limits=pipeline.limits, keep_icc_profile=pipeline.keep_icc_profile)
        self.service = ImageService(
            processor,
            raw_prefix=pipeline.raw_prefix,
            processed_prefix=pipeline.processed_prefix,
            disposition=pipeline.raw_disposition,
            # The process's image slots (uploads, the local worker, the local event source's
            # handler): at most PROCESS_CONCURRENCY at once; beyond it, 503 busy after PROCESS_WAIT_MS.
            pool=ProcessingPool.of_process(pipeline.process_concurrency, wait_s=pipeline.process_wait_ms / 1000),
        )

    @property
    def store(self):
        return self.backend.store

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

    async def describe(self, image_id: str, base_url: str) -> ImageInfo | None:
        """Status from storage alone: manifest → processed; raw tagged failed → failed; raw → pending."""
        raws, (record, _) = await asyncio.gather(self.store.list(self.raw_dir(image_id), limit=1), self.manifest(image_id))
        raw = raws[0] if raws else None
        created = datetime.fromtimestamp(ids.created_ms(image_id) / 1000, timezone.utc).isoformat(timespec="seconds")
        if record is not None and (raw is None or (record["source"]["key"] == raw.key and record["source"]["etag"] == raw.etag)):
            variants = [
                VariantInfo(
                    name=v["name"],
                    url=self.variant_link(image_id, v, base_url),
                    width=v["width"],
                    height=v["height"],
                    bytes=v["bytes"],
                    content_type=v["content_type"],
                )
                for v in record["variants"]
            ]
            return ImageInfo(image_id, "processed", None, record["source"], record.get("placeholder"), variants, created)
        if raw is None:
            return None
        tags = await self.store.get_tags(raw.key)
        source = {"key": raw.key, "etag": raw.etag, "bytes": raw.size}
        if tags.get(STATUS_TAG) == "failed":
            return ImageInfo(image_id, "failed", tags.get(ERROR_TAG, "unknown"), source, None, [], created)
        return ImageInfo(image_id, "pending", None, source, None, [], created)

    def variant_link(self, image_id: str, variant: dict, base_url: str) -> str:
        if self.settings.public_base_url:
            return self.settings.public_base_url + variant["key"]
        return f"{base_url}images/{image_id}/{variant['name']}"

    async def store_upload(self, upload: UploadFile) -> tuple[str, str]:
        """Check a multipart file (size while reading, type from its bytes), then store it under
        `raw/<new id>/<leaf>`. Nothing is stored when it is refused."""
        limit = self.settings.max_bytes
        data = await upload.read(limit + 1)  # one copy (chunks + join held two at once)
        if len(data) > limit:
            raise problem(413, f"the file is over the {limit}-byte limit", "too_large")
        if not data:
            raise problem(400, "the file is empty", "empty_file")
        kind = sniff(data)
        if kind not in DECODABLE or kind not in self.settings.pipeline.limits.allowed_types:
            allowed = ", ".join(sorted(self.settings.pipeline.limits.allowed_types))
            raise problem(415, f"the file is {kind or 'not an image we recognise'}; accepted: {allowed}", "unsupported_type")
        image_id = ids.new_id()
        key = ids.raw_key(self.settings.pipeline.raw_prefix, image_id, upload.filename or "", EXTENSIONS[kind])
        await self.store.write(key, data, DECODABLE[kind][1], {})
        return image_id, key


def problem(status: int, detail: str, error_code: str | None = None) -> ProblemDetailsException:
    extra = {"error_code": error_code} if error_code else None
    return ProblemDetailsException(detail=detail, status_code=status, extra=extra)


def api_of(request: Request) -> Api:
    return request.app.state.api


def base_url_of(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/"


def checked_id(image_id: str) -> str:
    """The id, if it has the pattern ids are made with; otherwise 404 before any storage call."""
    if not ids.is_valid(image_id):
        raise problem(404, "no such image")
    return image_id


# --- routes ---------------------------------------------------------------------------------


@post("/uploads", status_code=201, summary="Start a direct upload (presigned POST)")
async def create_upload(request: Request, data: JSONBody[UploadRequest]) -> UploadGrant:
    """A presigned POST for one image: the form must be sent to `upload.url` with every field of
    `upload.fields` and the file last, within `expires_at`. The policy pins the key
    (`raw/<id>/<sanitised file name>`), caps the size at MAX_INPUT_BYTES and requires an
    `image/` Content-Type."""
    api = api_of(request)
    if api.settings.image_type(data.content_type) is None:
        allowed = ", ".join(sorted(api.settings.pipeline.limits.allowed_types))
        raise problem(415, f"{data.content_type!r} is not an accepted image type ({allowed})", "unsupported_type")
    if data.size > api.settings.max_bytes:
        raise problem(413, f"{data.size} bytes is over the {api.settings.max_bytes}-byte limit", "too_large")
    if data.size < 1:
        raise problem(400, "size must be at least 1 byte", "empty_file")
    image_id = ids.new_id()
    kind = api.settings.image_type(data.content_type)
    key = ids.raw_key(api.settings.pipeline.raw_prefix, image_id, data.filename, EXTENSIONS[kind])
    base = base_url_of(request)
    expires = api.settings.upload_expiry_s
    form = await api.backend.presign_upload(key, data.content_type.split(";")[0].strip(), api.settings.max_bytes, expires, base)
    expires_at = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + expires, timezone.utc)
    return UploadGrant(
        id=image_id,
        upload=UploadForm(url=form["url"], fields=form["fields"]),
        status_url=f"{base}images/{image_id}",
        expires_at=expires_at.isoformat(timespec="seconds"),
    )


@post("/uploads/local", status_code=204, summary="Receive a local upload form (filesystem backend only)",
      include_in_schema=False)
async def receive_local_upload(
    request: Request, data: MultipartBody[dict[str, Any]]
) -> None:
    """Where `POST /uploads` points the browser when the images live in a directory: the same
    form S3 would receive, checked against the policy this server signed."""
    api = api_of(request)
    backend = api.backend
    if not isinstance(backend, FileBackend):
        raise NotFoundException()
    try:
        policy = backend.check_policy(data)
    except (UploadRefused, ValueError, KeyError) as exc:
        raise problem(403, str(exc)) from None
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        raise problem(400, "the form has no file field")
    body = await upload.read(policy["max_bytes"] + 1)
    if len(body) > policy["max_bytes"]:
        raise problem(413, f"the file is over the {policy['max_bytes']}-byte limit", "too_large")
    if not body:
        raise problem(400, "the file is empty", "empty_file")
    await api.store.write(policy["key"], body, str(data["Content-Type"]), {})
    backend.uploaded(policy["key"])


@get("/images/{image_id:str}", summary="An image's status, source, placeholder and variants")
async def get_image(request: Request, image_id: FromPath[str]) -> ImageInfo:
    api = api_of(request)
    info = await api.describe(checked_id(image_id), base_url_of(request))
    if info is None:
        raise problem(404, "no such image")
    return info


@get("/images/jobs/{job_id:str}", summary="A background job's status (same body as GET /images/{id})")
async def get_job(request: Request, job_id: FromPath[str]) -> ImageInfo:
    return await get_image.fn(request, job_id)


@get("/images/{image_id:str}/{variant:str}", status_code=302, summary="Redirect to a variant's bytes")
async def get_variant(request: Request, image_id: FromPath[str], variant: FromPath[str]) -> Redirect:
    api = api_of(request)
    record, _ = await api.manifest(checked_id(image_id))
    found = next((v for v in (record or {}).get("variants", []) if v["name"] == variant), None)
    if found is None:
        raise problem(404, "no such image or variant")
    if api.settings.public_base_url:
        url = api.settings.public_base_url + found["key"]
    else:
        url = await api.backend.object_url(found["key"], api.settings.url_expiry_s, base_url_of(request))
    return Redirect(url, status_code=302, headers={"Cache-Control": "private, max-age=60"})


@get("/files/{key:path}", summary="A processed file (filesystem backend only)", include_in_schema=False)
async def get_file(request: Request, key: FromPath[str]) -> Response[bytes]:
    api = api_of(request)
    key = key.lstrip("/")
    if not isinstance(api.backend, FileBackend) or not key.startswith(api.settings.pipeline.processed_prefix):
        raise NotFoundException()
    if any(part in ("", ".", "..") for part in key.split("/")) or "\x00" in key:
        raise NotFoundException()
    data = await api.store.read_optional(key)
    if data is None:
        raise NotFoundException()
    kind = sniff(data)
    media = DECODABLE[kind][1] if kind in DECODABLE else "application/octet-stream"
    return Response(data, media_type=media, headers={"Cache-Control": api.settings.pipeline.cache_control})


async def _multipart_file(data: dict[str, Any]) -> UploadFile:
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        raise problem(400, "send the image as the multipart field 'file'")
    return upload


class ImageSlot:
    """Route middleware: one of the process's image slots (`Api.service.pool`) is taken before the
    request's body is read, so uploads beyond PROCESS_CONCURRENCY wait unread (in the socket, not
    in memory) and, after PROCESS_WAIT_MS, get 503 `busy` with nothing read or stored. The image
    work inside the request runs in this slot. A refused body is drained (not kept) first, so the
    client, still sending, gets to read the 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entered = False
        try:
            async with scope["app"].state.api.service.pool.reserve():
                entered = True
                await self.app(scope, receive, send)
        except Busy:
            while not entered and (await receive()).get("more_body"):
                pass
            raise


@post("/images", status_code=201, summary="Upload and process an image in the request", middleware=[ImageSlot])
async def upload_image(
    request: Request, data: MultipartBody[dict[str, Any]]
) -> ImageInfo:
    """Multipart field `file`. Refused before anything is stored when too large (413) or not an
    accepted image type judged from its bytes (415); a file that fails to decode is removed
    again and answered 422 with the pipeline's error code. When PROCESS_CONCURRENCY images are
    already being processed and none finishes within PROCESS_WAIT_MS: 503 `busy` with
    Retry-After, nothing stored."""
    api = api_of(request)
    image_id, key = await api.store_upload(await _multipart_file(data))
    try:
        outcome = await api.service.handle(api.store, ObjectRef(api.backend.bucket, key))
    except PipelineError as exc:
        raise problem(503, f"storage failed, try again: {exc.message}", exc.code) from None
    if outcome.status == "failed":
        await api.service.remove(api.store, key, delete_raw=True)
        raise problem(422, outcome.reason, outcome.error_code)
    info = await api.describe(image_id, base_url_of(request))
    assert info is not None
    return info


@post("/images/async", status_code=202, summary="Upload an image; process it in the background")
async def upload_image_async(
    request: Request, data: MultipartBody[dict[str, Any]]
) -> JobAccepted:
    api = api_of(request)
    image_id, key = await api.store_upload(await _multipart_file(data))
    api.backend.uploaded(key)
    return JobAccepted(job_id=image_id, status_url=f"{base_url_of(request)}images/jobs/{image_id}")


@delete("/images/{image_id:str}", status_code=204, summary="Delete an image: its upload and every output")
async def delete_image(request: Request, image_id: FromPath[str]) -> None:
    api = api_of(request)
    checked_id(image_id)
    raws, (record, outputs) = await asyncio.gather(api.store.list(api.raw_dir(image_id), limit=10), api.manifest(image_id))
    if not raws and not outputs:
        raise problem(404, "no such image")
    raw_keys = [r.key for r in raws] or ([record["source"]["key"]] if record else [])
    for raw_key in raw_keys:
        await api.service.remove(api.store, raw_key, delete_raw=True)
    # The id's output prefix belongs to this image alone: sweep what no manifest listed, manifest last.
    left = [o.key for o in await api.store.list(api.output_dir(image_id), limit=1000)]
    for key in sorted(left, key=lambda k: k.endswith("/" + keys.MANIFEST_NAME)):
        await api.store.delete(key)


@delete("/images/{image_id:str}/{variant:str}", status_code=204, include_in_schema=False)
async def delete_nested(image_id: FromPath[str], variant: FromPath[str]) -> None:
    """An id with a `/` in it: no such image (not 405), like every other malformed id."""
    raise problem(404, "no such image")


@get("/healthz", summary="Liveness", include_in_schema=False, media_type=MediaType.TEXT)
async def healthz() -> str:
    return "ok"


# --- the app --------------------------------------------------------------------------------


def _body_too_large(exc: RequestEntityTooLarge) -> ProblemDetailsException:
    """Litestar stops reading a body over `request_max_body_size` as it streams in."""
    return problem(413, "the request body is over the upload limit", "too_large")


def _storage_failure(request: Request, exc: StorageFailure) -> Response:
    return ProblemDetailsException(detail=f"storage failed, try again: {exc.message}", status_code=503,
                                   extra={"error_code": exc.code}).to_response(request)


def _busy(request: Request, exc: Busy) -> Response:
    return ProblemDetailsException(detail=exc.message, status_code=503, extra={"error_code": exc.code},
                                   headers={"Retry-After": str(exc.retry_after_s)}).to_response(request)


def create_app(
    settings: ApiSettings | None = None,
    *,
    storage_dir: str | Path | None = None,
    endpoint_url: str | None = None,
    backend: S3Backend | FileBackend | None = None,
) -> Litestar:
    """The API over S3 (`settings.bucket_name`, `endpoint_url` or the environment's) or over a
    directory (`storage_dir`). Settings come from the environment, validated once, when omitted."""
    if settings is None:
        settings = ApiSettings.from_env(need_bucket=storage_dir is None and backend is None)
    if backend is None:
        if storage_dir is not None:
            backend = FileBackend(storage_dir)
        else:
            if not settings.bucket_name:
                raise ValueError("an S3 API needs settings.bucket_name (BUCKET_NAME)")
            backend = S3Backend(
                settings.bucket_name,
                endpoint_url=endpoint_url or settings.pipeline.s3_endpoint_url,
                cache_control=settings.pipeline.cache_control,
                max_attempts=settings.pipeline.s3_max_attempts,
            )
    api = Api(settings, backend)
    return_freed_memory()  # a long-running process: each image's memory goes back when it is done

    async def start(app: Litestar) -> None:
        await backend.start(api.service)

    async def stop(app: Litestar) -> None:
        await backend.close()

    cors = CORSConfig(allow_origins=list(settings.allowed_origins)) if settings.allowed_origins else None
    return Litestar(
        route_handlers=[
            create_upload,
            receive_local_upload,
            get_image,
            get_job,
            get_variant,
            get_file,
            upload_image,
            upload_image_async,
            delete_image,
            delete_nested,
            healthz,
            *pages.routes,
        ],
        state=_state(api),
        on_startup=[start],
        on_shutdown=[stop],
        plugins=[
            ProblemDetailsPlugin(
                ProblemDetailsConfig(
                    enable_for_all_http_exceptions=True,
                    exception_to_problem_detail_map={RequestEntityTooLarge: _body_too_large},
                )
            )
        ],
        exception_handlers={StorageFailure: _storage_failure, Busy: _busy},
        openapi_config=OpenAPIConfig(title="s3-image-pipeline upload API", version=__version__, path="/schema"),
        cors_config=cors,
        request_max_body_size=settings.max_bytes + FORM_OVERHEAD,
    )


def _state(api: Api):
    from litestar.datastructures import State

    return State({"api": api})
