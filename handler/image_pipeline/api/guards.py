"""Checks every request passes before a route reads its body or touches storage (Litestar guards
run before the handler's arguments are parsed).

`trusted_hosts(settings)` (`create_app`: every route of the app; the plugin: with `check_host=True`):
- **Host**: only the API's own names: localhost, 127.0.0.1, [::1], ALLOWED_HOSTS, PUBLIC_URL's
  host and, on Lambda, the domain API Gateway received the request on (the event's
  `requestContext.domainName`, set by API Gateway, not by the client). Anything else is 400: a
  DNS-rebinding page (its own name resolving to 127.0.0.1) reaches nothing.
- **Origin** (POST, PUT, PATCH, DELETE): a browser names the page that made the request in
  `Origin` (or, without it, `Referer`). It must be the API's own origin (the Host it was sent
  to), PUBLIC_URL's, or one of ALLOWED_ORIGINS; anything else, `null` included, is 403 and
  nothing is stored. A multipart `fetch(..., {mode: "no-cors"})` from another site needs no
  preflight, so CORS alone would not stop it (nor a session cookie the browser sends along).
  Requests with neither header (curl, servers) pass. `same_origin`: every route of the plugin.

`authenticated` (the API's routes): who the caller is (auth.py, or the app's own `owner=`), kept as
`request.state.caller`.

Each route finds its `Api` (the plugin's settings, storage and service) in the route handler's
`opt` under `API_KEY`, put there by the plugin's router: two plugins in one app keep their own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from .auth import Caller
from .problems import problem
from .settings import ApiSettings

API_KEY = "image_pipeline.api"  # the route handler's `opt` key of its Api
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


def check_host(settings: ApiSettings, connection: ASGIConnection) -> None:
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


def check_origin(settings: ApiSettings, connection: ASGIConnection) -> None:
    if connection.scope.get("method") not in STATE_CHANGING:
        return
    host = connection.headers.get("host", "")
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


def trusted_hosts(settings: ApiSettings) -> Guard:
    """A guard for a whole app: the Host check with these settings."""

    def trusted_host(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        check_host(settings, connection)

    return trusted_host


def checked_host(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The Host check with the route's own API settings (the plugin's `check_host=True`)."""
    check_host(api_in(handler).settings, connection)


def same_origin(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    check_origin(api_in(handler).settings, connection)


def api_in(handler: BaseRouteHandler) -> Any:
    """The `app.Api` of the plugin whose router holds this route (typed there: `app.api_of`)."""
    return handler.opt[API_KEY]


def api_of(connection: ASGIConnection) -> Any:
    return api_in(connection.route_handler)


async def authenticated(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    connection.state.caller = await api_in(handler).auth.caller(connection)


def own_id(connection: ASGIConnection, image_id: str) -> str:
    """The id, if it is well formed and the caller may act on it; otherwise 404 (the same body
    as an id that does not exist) before any storage call."""
    return caller_of(connection).resolve(image_id)


def caller_of(connection: ASGIConnection) -> Caller:
    return connection.state.caller
