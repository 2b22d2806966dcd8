"""The API's settings: the pipeline's own `Settings` plus what only the API needs, read from the
environment once at start-up; every problem reported together in one `ConfigError`.

BUCKET_NAME       the bucket (S3 mode; not needed with `--storage DIR`)
PUBLIC_BASE_URL   when set, variant URLs are this + the object key (a CDN or a public bucket);
                  otherwise short-lived presigned GETs
ALLOWED_ORIGINS   comma-separated origins allowed to call the API from a browser (CORS); empty:
                  same origin only. The bucket's CORS rule (template) takes the same list.
UPLOAD_EXPIRY_SECONDS  lifetime of a presigned upload (default 600)
URL_EXPIRY_SECONDS     lifetime of a presigned variant URL (default 900)

Who may call it (see api/auth.py and SECURITY.md):
API_AUTH          jwt (the default, also when unset) | iam | open. `open` (no owners, no token)
                  only when asked for by name.
OWNER_CLAIM       the JWT claim that names an image's owner (default `sub`)
ADMIN_SCOPE       a scope that may act on every image (default `images:admin`)
JWT_SECRET        verify HS256 tokens in the app with this secret (at least 32 bytes), or
JWKS_URL          verify tokens in the app against this identity provider's keys; neither: the
                  claims API Gateway's JWT authorizer verified are read from the Lambda event
JWT_ISSUER, JWT_AUDIENCE  required `iss` / `aud` of self-verified tokens
ALLOWED_HOSTS     comma-separated Host values accepted besides localhost, 127.0.0.1 and [::1]
                  (`host` for any port, or `host:port`), and besides PUBLIC_URL's host and, on
                  Lambda, the API Gateway domain the event names. Any other Host: 400.
PUBLIC_URL        the API's own external base URL for absolute links (status_url, variant url);
                  unset: links are paths (`/images/<id>`), never built from the request's Host

Private delivery (see api/delivery.py and docs/private-delivery.md):
DELIVERY          public (the default: PUBLIC_BASE_URL links anyone may read) | private (every link
                  under PUBLIC_BASE_URL, the CDN's address, is a CloudFront signed URL that expires
                  after URL_EXPIRY_SECONDS). private needs PUBLIC_BASE_URL, CLOUDFRONT_KEY_ID and one of:
CLOUDFRONT_KEY_ID the CloudFront public key's id (in the distribution's trusted key group)
CLOUDFRONT_PRIVATE_KEY         its private key, PEM (`serve`, tests), or
CLOUDFRONT_PRIVATE_KEY_SECRET  the ARN of a Secrets Manager secret holding that PEM (on AWS; read
                  once when the app is created, never logged)

Sizes on demand (see ondemand/): ONDEMAND_WIDTHS (widths anyone may ask for), SIGNING_KEY (HMAC
key for any other width; unset: the allowlist only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..ondemand import OnDemandSettings
from ..settings import Settings
from .delivery import DELIVERY_MODES, load_private_key

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
AUTH_MODES = ("jwt", "iam", "open")
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_KEY_ID = re.compile(r"[A-Z0-9]{1,128}")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+")
MIN_SECRET_BYTES = 32  # HS256 needs a key of at least the hash's size (RFC 7518 3.2)
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
EXTENSIONS = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "avif": "avif",
    "heif": "heic",
    "tiff": "tif",
    "bmp": "bmp",
}


@dataclass(frozen=True)
class ApiSettings:
    pipeline: Settings = field(default_factory=Settings)
    bucket_name: str | None = None
    public_base_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    upload_expiry_s: int = 600
    url_expiry_s: int = 900
    auth: str = "jwt"
    owner_claim: str = "sub"
    admin_scope: str = "images:admin"
    jwt_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    allowed_hosts: tuple[str, ...] = DEFAULT_HOSTS
    public_url: str | None = None
    ondemand: OnDemandSettings = field(default_factory=OnDemandSettings)
    delivery: str = "public"
    cloudfront_key_id: str | None = None
    cloudfront_private_key: str | None = field(default=None, repr=False)
    cloudfront_private_key_secret: str | None = None

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
        try:
            ondemand = OnDemandSettings.from_env(env)
        except ConfigError as exc:
            problems.extend(line.strip()[2:] for line in str(exc).splitlines()[1:])
            ondemand = OnDemandSettings()

        bucket = env.get("BUCKET_NAME", "").strip() or None
        if need_bucket and not bucket:
            problems.append("BUCKET_NAME must name the bucket the API presigns uploads to")

        def base_url(name: str) -> str | None:
            """An http(s) base URL without query or fragment, ending with `/`; None when unset."""
            value = env.get(name, "").strip() or None
            if value:
                parts = urlsplit(value)
                if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                    problems.append(f"{name}={value!r} must be an http(s) URL without query or fragment")
                value = value.rstrip("/") + "/"
            return value

        public = base_url("PUBLIC_BASE_URL")

        origins = tuple(o.strip().rstrip("/") for o in env.get("ALLOWED_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
                problems.append(f"ALLOWED_ORIGINS: {origin!r} must be '*' or scheme://host[:port]")

        auth = env.get("API_AUTH", "").strip().lower() or "jwt"
        if auth not in AUTH_MODES:
            problems.append(f"API_AUTH={auth!r} must be jwt, iam or open")
        owner_claim = env.get("OWNER_CLAIM", "").strip() or "sub"
        admin_scope = env.get("ADMIN_SCOPE", "").strip() or "images:admin"
        if any(c.isspace() for c in admin_scope):
            problems.append(f"ADMIN_SCOPE={admin_scope!r} must be one scope (no spaces)")
        secret = env.get("JWT_SECRET", "") or None
        jwks = env.get("JWKS_URL", "").strip() or None
        issuer = env.get("JWT_ISSUER", "").strip() or None
        audience = env.get("JWT_AUDIENCE", "").strip() or None
        if secret and jwks:
            problems.append("JWT_SECRET and JWKS_URL: set one way to verify tokens, not both")
        if secret and len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
            problems.append(
                f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (HS256); e.g. `openssl rand -hex 32`"
            )
        if jwks:
            parts = urlsplit(jwks)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.append(f"JWKS_URL={jwks!r} must be an http(s) URL")
        if auth != "jwt" and (secret or jwks or issuer or audience):
            problems.append(f"JWT_SECRET, JWKS_URL, JWT_ISSUER and JWT_AUDIENCE apply to API_AUTH=jwt, not {auth}")
        if (issuer or audience) and not (secret or jwks):
            problems.append(
                "JWT_ISSUER/JWT_AUDIENCE need JWT_SECRET or JWKS_URL (API Gateway's authorizer checks "
                "its own issuer and audience)"
            )

        hosts = tuple(h.strip().lower() for h in env.get("ALLOWED_HOSTS", "").split(",") if h.strip())
        for host in hosts:
            if not _HOST.fullmatch(host):
                problems.append(f"ALLOWED_HOSTS: {host!r} must be a host name or host:port (no scheme, no '*')")

        own = base_url("PUBLIC_URL")

        delivery = env.get("DELIVERY", "").strip().lower() or "public"
        key_id = env.get("CLOUDFRONT_KEY_ID", "").strip() or None
        private_key = env.get("CLOUDFRONT_PRIVATE_KEY", "").strip() or None
        key_secret = env.get("CLOUDFRONT_PRIVATE_KEY_SECRET", "").strip() or None
        if delivery not in DELIVERY_MODES:
            problems.append(f"DELIVERY={delivery!r} must be public or private")
        elif delivery == "private":
            if not public:
                problems.append(
                    "DELIVERY=private needs PUBLIC_BASE_URL (the CDN's address, whose links it signs); "
                    "without a CDN, links are short-lived presigned S3 GETs already: leave DELIVERY=public"
                )
            if not key_id:
                problems.append("DELIVERY=private needs CLOUDFRONT_KEY_ID (the id of the CDN's public key)")
            elif not _KEY_ID.fullmatch(key_id):
                problems.append(
                    f"CLOUDFRONT_KEY_ID={key_id!r} must be a CloudFront public key id (like K2JCJMDEHXQW5F)"
                )
            if private_key and key_secret:
                problems.append("CLOUDFRONT_PRIVATE_KEY and CLOUDFRONT_PRIVATE_KEY_SECRET: set one, not both")
            elif not private_key and not key_secret:
                problems.append(
                    "DELIVERY=private needs the private key to sign with: CLOUDFRONT_PRIVATE_KEY (PEM) or "
                    "CLOUDFRONT_PRIVATE_KEY_SECRET (a Secrets Manager ARN)"
                )
            if private_key:
                try:
                    load_private_key(private_key, "CLOUDFRONT_PRIVATE_KEY")
                except ConfigError as exc:
                    problems.append(str(exc))
            if key_secret and not _SECRET_ARN.fullmatch(key_secret):
                problems.append(f"CLOUDFRONT_PRIVATE_KEY_SECRET={key_secret!r} must be a Secrets Manager secret ARN")
        elif key_id or private_key or key_secret:
            problems.append(
                "CLOUDFRONT_KEY_ID, CLOUDFRONT_PRIVATE_KEY and CLOUDFRONT_PRIVATE_KEY_SECRET apply to "
                "DELIVERY=private, not public"
            )

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
            auth=auth,
            owner_claim=owner_claim,
            admin_scope=admin_scope,
            jwt_secret=secret,
            jwks_url=jwks,
            jwt_issuer=issuer,
            jwt_audience=audience,
            allowed_hosts=DEFAULT_HOSTS + tuple(h for h in hosts if h not in DEFAULT_HOSTS),
            public_url=own,
            ondemand=ondemand,
            delivery=delivery,
            cloudfront_key_id=key_id,
            cloudfront_private_key=private_key,
            cloudfront_private_key_secret=key_secret,
        )
        if problems:
            raise ConfigError("invalid image-pipeline API settings:\n  - " + "\n  - ".join(problems))
        return settings
