"""Checks every request passes before a route reads its body or touches storage (Litestar guards
run before the handler's arguments are parsed).

`trusted_request` (every route):
- **Host**: only the API's own names: localhost, 127.0.0.1, [::1], ALLOWED_HOSTS, PUBLIC_URL's
  host and, on Lambda, the domain API Gateway received the request on (the event's
  `requestContext.domainName`, set by API Gateway, not by the client). Anything else is 400: a
  DNS-rebinding page (its own name resolving to 127.0.0.1) reaches nothing.
- **Origin** (POST, PUT, PATCH, DELETE): a browser names the page that made the request in
  `Origin` (or, without it, `Referer`). It must be the API's own origin (the Host it was sent
  to), PUBLIC_URL's, or one of ALLOWED_ORIGINS; anything else, `null` included, is 403 and
  nothing is stored. A multipart `fetch(..., {mode: "no-cors"})` from another site needs no
  preflight, so CORS alone would not stop it. Requests with neither header (curl, servers) pass.

`authenticated` (the API's routes): who the caller is (auth.py), kept as `request.state.caller`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from .auth import Caller
from .problems import problem

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _split_host(host: str) -> tuple[str, str | None]:
    """("name", "port" or None) of a Host value (IPv6 in brackets)."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    name, colon, port = host.partition(":")
    return name, port if colon else None


def host_allowed(host: str, allowed: tuple[str, ...], extra_names: tuple[str, ...] = ()) -> bool:
    name, port = _split_host(host.strip().lower())
    if not name:
        return False
    for entry in allowed:
        entry_name, entry_port = _split_host(entry)
        if entry_name == name and (entry_port is None or entry_port == port):
            return True
    return name in extra_names


def _origin_of(value: str) -> str:
    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else "null"


def trusted_request(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    settings = connection.app.state.api.settings
    host = connection.headers.get("host", "")
    extra = []
    if settings.public_url:
        extra.append(_split_host(urlsplit(settings.public_url).netloc.lower())[0])
    event = connection.scope.get("aws.event")
    if isinstance(event, dict):
        domain = (event.get("requestContext") or {}).get("domainName")
        if isinstance(domain, str) and domain:
            extra.append(domain.lower())
    if not host_allowed(host, settings.allowed_hosts, tuple(extra)):
        raise problem(400, "this API does not answer to that Host; add it to ALLOWED_HOSTS if it is yours")

    if connection.scope.get("method") not in STATE_CHANGING:
        return
    origin = connection.headers.get("origin")
    if origin is None:
        referer = connection.headers.get("referer")
        if referer is None:
            return  # not a browser's cross-site request: curl, a server, an SDK
        origin = _origin_of(referer)
    origin = origin.strip().rstrip("/").lower()
    allowed = {o.lower() for o in settings.allowed_origins}
    if settings.public_url:
        allowed.add(_origin_of(settings.public_url))
    if origin != "null" and (urlsplit(origin).netloc == host.strip().lower() or origin in allowed or "*" in allowed):
        return
    raise problem(
        403, "cross-site request refused: changes come from this API's own pages or an origin in ALLOWED_ORIGINS"
    )


async def authenticated(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    connection.state.caller = await connection.app.state.api.auth.caller(connection)


def caller_of(connection: ASGIConnection) -> Caller:
    return connection.state.caller
