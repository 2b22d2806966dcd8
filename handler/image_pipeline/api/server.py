"""`create_app()`: the upload API as an app of its own (`image-pipeline serve`, the Lambda
function): the plugin mounted at `/` with the page, API_AUTH's JWT/IAM/open callers, the Host
check on every route, `/healthz`, CORS from ALLOWED_ORIGINS and the OpenAPI schema at `/schema`."""

from __future__ import annotations

import logging
from pathlib import Path

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.config import OpenAPIConfig
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin

from .. import __version__
from ..errors import Busy, StorageFailure
from .app import FORM_OVERHEAD, _body_too_large, _busy, _storage_failure, _undecodable_form, healthz
from .backends import Backend, FileBackend, S3Backend
from .guards import trusted_hosts
from .plugin import GALLERY_FROM_ENV, ImagePipelinePlugin
from .settings import ApiSettings

log = logging.getLogger("image_pipeline.api")


def create_app(
    settings: ApiSettings | None = None,
    *,
    storage_dir: str | Path | None = None,
    endpoint_url: str | None = None,
    backend: Backend | None = None,
) -> Litestar:
    """The API over S3 (`settings.bucket_name`, `endpoint_url` or the environment's) or over a
    directory (`storage_dir`). Settings come from the environment, validated once, when omitted.
    The app's `state.api` is the plugin's `Api` (the Lambda entry point starts its backend)."""
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
    if settings.auth == "open":
        log.warning("API_AUTH=open: anyone who can reach this API may upload, read and delete every image")
    plugin = ImagePipelinePlugin(backend, path="/", settings=settings, page=True, gallery=GALLERY_FROM_ENV)
    cors = CORSConfig(allow_origins=list(settings.allowed_origins)) if settings.allowed_origins else None
    app = Litestar(
        route_handlers=[healthz],
        plugins=[
            plugin,
            # The app's own answers (an unknown path, a method a route does not have) as problems too.
            ProblemDetailsPlugin(
                ProblemDetailsConfig(
                    enable_for_all_http_exceptions=True,
                    exception_to_problem_detail_map={RequestEntityTooLarge: _body_too_large},
                )
            ),
        ],
        exception_handlers={StorageFailure: _storage_failure, UnicodeDecodeError: _undecodable_form, Busy: _busy},
        guards=[trusted_hosts(settings)],
        openapi_config=OpenAPIConfig(title="s3-image-pipeline upload API", version=__version__, path="/schema"),
        cors_config=cors,
        request_max_body_size=settings.max_bytes + FORM_OVERHEAD,
    )
    app.state.api = plugin.api
    return app
