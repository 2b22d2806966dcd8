"""Who is calling, and which images they may act on.

API_AUTH decides how a caller is known (api/settings.py; SECURITY.md has the threat model):

- `jwt` (the default): the owner is a claim (OWNER_CLAIM, default `sub`) of a JWT. With
  JWT_SECRET (HS256) or JWKS_URL the app verifies the `Authorization: Bearer` token itself:
  signature with the one algorithm its key is for (never `none`, never a public key as an HMAC
  secret), `exp` required, `nbf`, and `iss`/`aud` when JWT_ISSUER/JWT_AUDIENCE are set. Without
  either, it reads the claims API Gateway's JWT authorizer verified from the Lambda event (Mangum
  passes it as `scope["aws.event"]`); a request without them is refused. A token whose `scope`
  (space separated) or `scp` includes ADMIN_SCOPE may act on every image.
- `iam`: the owner is the caller's IAM principal as API Gateway's IAM authorization saw it
  (`requestContext.authorizer.iam.userArn`; for an assumed role, the role without its session
  name, so one role stays one owner). No admin through IAM.
- `open`: no owners and no token; everyone may act on every image. Only when asked for by name.

That is `Authenticator`, one `Identity`. Inside another Litestar app the app's own login decides
instead (`ImagePipelinePlugin(owner=..., admin=...)`: `OwnerIdentity`), with the same rules.

Refusals are 401 problem details with `WWW-Authenticate`, made before any storage call or body
parsing (see guards.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from litestar.connection import ASGIConnection

from .. import ids
from .problems import not_found, problem
from .settings import ApiSettings

log = logging.getLogger("image_pipeline.api")

MAX_OWNER = 256  # characters: S3 metadata (2 KB in all) carries it
LEEWAY_S = 30  # clock skew allowed for exp / nbf / iat
_ASSUMED_ROLE = re.compile(r"(arn:aws[\w-]*:sts::\d+:assumed-role/[^/]+)/.+")


@dataclass(frozen=True)
class Caller:
    """Whom a request is for: an owner (None in open mode) and whether it may act on every image."""

    owner: str | None
    admin: bool = False
    tag: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", ids.owner_tag(self.owner) if self.owner is not None else None)

    def resolve(self, image_id: str) -> str:
        """The image id, if this caller may act on it; otherwise the same 404 as for an id that
        does not exist. Every id route calls this before any storage call."""
        parsed = ids.parse(image_id)
        if parsed is None:
            raise not_found()
        tag, _ = parsed
        if self.admin or (tag is not None and tag == self.tag):
            return image_id
        raise not_found()  # another owner's image, or an ownerless one (admins only)


EVERYONE = Caller(None, admin=True)  # API_AUTH=open


class Identity(Protocol):
    """Who a request is for: a `Caller`, or a 401 problem (raised before any body is read)."""

    async def caller(self, connection: ASGIConnection) -> Caller: ...


OwnerOf = Callable[[ASGIConnection], "str | int | Awaitable[str | int | None] | None"]
AdminOf = Callable[[ASGIConnection], "bool | Awaitable[bool]"]


class OwnerIdentity:
    """The app's own login as an `Identity`: `owner(connection)` names the owner (None: nobody
    signed in, 401), `admin(connection)` whether they may act on every image. Either may be async.
    An owner that is empty, over 256 characters or not printable is refused like a bad token."""

    def __init__(self, owner: OwnerOf, admin: AdminOf | None = None) -> None:
        self.owner = owner
        self.admin = admin

    async def caller(self, connection: ASGIConnection) -> Caller:
        value = self.owner(connection)
        if inspect.isawaitable(value):
            value = await value
        if value is None:
            raise problem(401, "sign in first: this request is not for any owner")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_OWNER or not value.isprintable():
            raise problem(401, "the signed-in identity is not usable as an image owner")
        admin = False
        if self.admin is not None:
            decided = self.admin(connection)
            admin = bool(await decided if inspect.isawaitable(decided) else decided)
        return Caller(value, admin=admin)


class Authenticator:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._jwks: Any = None
        if settings.jwks_url:
            from jwt import PyJWKClient

            self._jwks = PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=10)

    @property
    def verifies_tokens(self) -> bool:
        return bool(self.settings.jwt_secret or self.settings.jwks_url)

    async def caller(self, request: ASGIConnection) -> Caller:
        mode = self.settings.auth
        if mode == "open":
            return EVERYONE
        event = request.scope.get("aws.event")  # the API Gateway event, from Mangum (on AWS only)
        context = (event.get("requestContext") if isinstance(event, dict) else None) or {}
        authorizer = context.get("authorizer") or {}
        if mode == "iam":
            arn = (authorizer.get("iam") or {}).get("userArn")
            if not isinstance(arn, str) or not arn:
                raise _unauthorized(
                    "an IAM-signed request (SigV4) through API Gateway is required", scheme="AWS4-HMAC-SHA256"
                )
            return Caller(_ASSUMED_ROLE.sub(r"\1", arn))
        if self.verifies_tokens:
            claims = await self._verify(_bearer(request))
        else:
            verified = (authorizer.get("jwt") or {}).get("claims")
            if not isinstance(verified, dict):
                raise _unauthorized("a bearer token verified by the API's JWT authorizer is required")
            claims = verified
        return self._caller_of(claims)

    def _caller_of(self, claims: dict) -> Caller:
        value = claims.get(self.settings.owner_claim)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_OWNER or not value.isprintable():
            raise _unauthorized(f"the token has no usable {self.settings.owner_claim!r} claim", invalid=True)
        return Caller(value, admin=self.settings.admin_scope in scopes(claims))

    async def _verify(self, token: str) -> dict:
        import jwt

        settings = self.settings
        try:
            if settings.jwt_secret:
                key, algorithms = settings.jwt_secret, ["HS256"]
            else:
                signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                if not signing.algorithm_name or signing.algorithm_name.startswith("HS"):
                    raise jwt.InvalidKeyError("a symmetric key in a public key set")  # never an HMAC secret
                key, algorithms = signing.key, [signing.algorithm_name]
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway=LEEWAY_S,
                options={"require": ["exp"], "verify_aud": settings.jwt_audience is not None},
            )
        except jwt.PyJWKClientConnectionError:
            log.exception("could not fetch the signing keys from JWKS_URL")
            raise problem(
                503,
                "the identity provider's signing keys could not be fetched; try again",
                headers={"Retry-After": "5"},
            ) from None
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired", invalid=True) from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("the token is not valid yet", invalid=True) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"the token has no {exc.claim!r} claim", invalid=True) from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("the token is not for this API (aud)", invalid=True) from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("the token is from another issuer (iss)", invalid=True) from None
        except jwt.PyJWTError:  # signature, algorithm (none, another family), format, unknown key
            raise _unauthorized("the token is not valid", invalid=True) from None


def scopes(claims: dict) -> set[str]:
    """The token's scopes: `scope` (space separated) and `scp` (a list; API Gateway hands array
    claims to the app as a string like "[a b]")."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            found.update(text.split())
        elif isinstance(value, list):
            found.update(str(v) for v in value)
    return found


def _bearer(request: ASGIConnection) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <token>'", invalid=True)
    return token.strip()


def _unauthorized(detail: str, *, invalid: bool = False, scheme: str = "Bearer"):
    challenge = f'{scheme} realm="image-pipeline"'
    if invalid:  # RFC 6750: a token was sent, and refused
        challenge += f', error="invalid_token", error_description="{detail}"'.replace("'", "")
    return problem(401, detail, headers={"WWW-Authenticate": challenge})


def make_token(
    secret: str,
    sub: str,
    *,
    ttl_s: int = 3600,
    scope: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 token for local use (`image-pipeline token`, tests): what `serve --jwt-secret` verifies."""
    import time

    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl_s}
    if scope:
        claims["scope"] = scope
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
