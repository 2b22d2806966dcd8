"""The API's settings: the pipeline's own `Settings` plus what only the API needs, read from the
environment once at start-up; every problem reported together in one `ConfigError`.

BUCKET_NAME       the bucket (S3 mode; not needed with `--storage DIR`)
PUBLIC_BASE_URL   when set, variant URLs are this + the object key (a CDN or a public bucket);
                  otherwise short-lived presigned GETs
ALLOWED_ORIGINS   comma-separated origins allowed to call the API from a browser (CORS); empty:
                  same origin only. The bucket's CORS rule (template) takes the same list.
UPLOAD_EXPIRY_SECONDS  lifetime of a presigned upload (default 600)
URL_EXPIRY_SECONDS     lifetime of a presigned variant URL (default 900)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..settings import Settings

MIME_TYPES = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/heic": "heif",
    "image/heif": "heif",
    "image/heic-sequence": "heif",
    "image/heif-sequence": "heif",
    "image/tiff": "tiff",
    "image/bmp": "bmp",
    "image/x-ms-bmp": "bmp",
}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "avif": "avif", "heif": "heic",
              "tiff": "tif", "bmp": "bmp"}


@dataclass(frozen=True)
class ApiSettings:
    pipeline: Settings = field(default_factory=Settings)
    bucket_name: str | None = None
    public_base_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    upload_expiry_s: int = 600
    url_expiry_s: int = 900

    @property
    def max_bytes(self) -> int:
        return self.pipeline.limits.max_bytes

    def image_type(self, content_type: str) -> str | None:
        """The pipeline's type name for a declared Content-Type, if uploads of it are allowed."""
        kind = MIME_TYPES.get(content_type.split(";")[0].strip().lower())
        return kind if kind in self.pipeline.limits.allowed_types else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, need_bucket: bool = True) -> ApiSettings:
        env = os.environ if environ is None else environ
        problems: list[str] = []
        try:
            pipeline = Settings.from_env(env)
        except ConfigError as exc:
            problems.extend(line.strip()[2:] for line in str(exc).splitlines()[1:])
            pipeline = Settings()

        bucket = env.get("BUCKET_NAME", "").strip() or None
        if need_bucket and not bucket:
            problems.append("BUCKET_NAME must name the bucket the API presigns uploads to")

        public = env.get("PUBLIC_BASE_URL", "").strip() or None
        if public:
            parts = urlsplit(public)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                problems.append(f"PUBLIC_BASE_URL={public!r} must be an http(s) URL without query or fragment")
            public = public.rstrip("/") + "/"

        origins = tuple(o.strip().rstrip("/") for o in env.get("ALLOWED_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
                problems.append(f"ALLOWED_ORIGINS: {origin!r} must be '*' or scheme://host[:port]")

        def seconds(name: str, default: int, high: int) -> int:
            raw = env.get(name, str(default)).strip()
            if not raw.isdigit() or not 1 <= int(raw) <= high:
                problems.append(f"{name}={raw!r} must be a whole number of seconds from 1 to {high}")
                return default
            return int(raw)

        settings = cls(
            pipeline=pipeline,
            bucket_name=bucket,
            public_base_url=public,
            allowed_origins=origins,
            upload_expiry_s=seconds("UPLOAD_EXPIRY_SECONDS", 600, 3600),
            url_expiry_s=seconds("URL_EXPIRY_SECONDS", 900, 7 * 24 * 3600),
        )
        if problems:
            raise ConfigError("invalid image-pipeline API settings:\n  - " + "\n  - ".join(problems))
        return settings
