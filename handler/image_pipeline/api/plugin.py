"""The upload API as a Litestar plugin: `Litestar(plugins=[ImagePipelinePlugin(storage=...)])`.

    from litestar_storages import FileSystemConfig, FileSystemStorage
    from image_pipeline.api import ImagePipelinePlugin

    app = Litestar(
        route_handlers=[...],  # the app's own
        plugins=[
            ImagePipelinePlugin(
                storage=FileSystemStorage(FileSystemConfig(path="images", create_dirs=True)),
                path="/images",
                guards=[signed_in],  # the app's guards: before every route the plugin adds
                owner=lambda connection: connection.session.get("user"),  # whose images are whose
                admin=lambda connection: connection.session.get("role") == "admin",
            )
        ],
    )

`on_app_init` adds one `Router` at `path` holding `app.ROUTES` (and the page's, `page=True`),
with the app's guards, the router-scoped problem-details handlers and body size limit, and the
plugin's `Api` in the router's `opt` (see guards.py: two plugins in one app keep their own); the
backend starts and stops with the app (`on_startup` / `on_shutdown`). Nothing else of the app is
touched: its routes, state, CORS, OpenAPI configuration and exception handlers stay its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol
from litestar.types import ControllerRouterHandler, Guard
from litestar_storages import BaseStorage

from ..ondemand import OnDemandSettings
from ..pool import return_freed_memory
from ..settings import Settings
from . import pages, subject
from .app import EXCEPTION_HANDLERS, FORM_OVERHEAD, ROUTES, Api
from .auth import AdminOf, Identity, OwnerIdentity, OwnerOf
from .backends import Backend, S3Backend, StorageBackend, backend_for
from .guards import API_KEY, checked_host, same_origin
from .settings import AUTH_MODES, ApiSettings

log = logging.getLogger("image_pipeline.api")

GALLERY_FROM_ENV: Literal["GALLERY"] = "GALLERY"  # create_app: the GALLERY variable decides
_API_FIELDS = {f.name for f in dataclasses.fields(ApiSettings)}
_PIPELINE_FIELDS = {f.name for f in dataclasses.fields(Settings)}


class ImagePipelinePlugin(InitPluginProtocol):
    """Mounts the upload API under `path` in the app it is given to.

    storage   a litestar-storages `Storage` (`S3Storage`: S3's presigned POST, tags and conditional
              writes; any other: in-process processing in the image slots), or the name of one
              registered with litestar-storages' `StoragePlugin` (`"default"`, `"images"`; the
              dependency names `"storage"`, `"images_storage"` too)
    path      where the routes go (default `/images`: `POST /images/uploads`, `GET /images/images/{id}`…)
    guards    the app's own guards, run before every route the plugin adds
    owner     `owner(connection)` → the caller's owner id (str), or None when nobody is signed in
              (401); sync or async. Without it: API_AUTH's JWT / IAM / open from the settings.
    admin     `admin(connection)` → whether the caller may act on every image (with `owner`)
    settings  an `ApiSettings` or the pipeline's `Settings`; default: the defaults (the environment
              is read only when asked: `ApiSettings.from_env()`)
    page      also serve the upload page and the gallery under `path`
    gallery   whether `/api/gallery` answers (default: yes when callers have owners)
    check_host  also refuse a Host outside ALLOWED_HOSTS (`create_app` does; an app of its own
              usually has Litestar's `allowed_hosts=`)
    **options   settings by name: any `ApiSettings` or `Settings` field (`public_base_url=`,
              `variants=`, `raw_prefix=`…), and `max_bytes=`, `ondemand_widths=`, `signing_key=`
    """

    __slots__ = ("api", "backend_given", "check_host", "gallery", "guards", "identity", "page", "path", "settings")

    def __init__(
        self,
        storage: BaseStorage | str | Backend,
        *,
        path: str = "/images",
        guards: Sequence[Guard] = (),
        owner: OwnerOf | None = None,
        admin: AdminOf | None = None,
        settings: ApiSettings | Settings | None = None,
        page: bool = False,
        gallery: bool | Literal["GALLERY"] | None = None,
        check_host: bool = False,
        **options: Any,
    ) -> None:
        if admin is not None and owner is None:
            raise ValueError("admin= decides among owners: give owner= too")
        self.settings = settings_of(settings, **options)
        self.backend_given = storage
        self.path = "/" + path.strip("/")
        self.guards = list(guards)
        self.identity: Identity | None = OwnerIdentity(owner, admin) if owner is not None else None
        self.page = page
        if gallery is None:  # on an open API a listing hands anyone every id: only when asked for
            gallery = self.identity is not None or self.settings.auth != "open"
        self.gallery: bool | None = None if gallery == GALLERY_FROM_ENV else bool(gallery)
        self.check_host = check_host
        self.api: Api | None = None  # made in on_app_init (a storage name needs the app's plugins)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        backend = self._backend(app_config)
        api = Api(self.settings, backend, identity=self.identity, mount=self.path, gallery=self.gallery)
        self.api = api
        return_freed_memory()  # a long-running process: each image's memory goes back when it is done
        app_config.route_handlers.append(self.router(api))

        async def start(app: Litestar) -> None:
            await backend.start(api.service)

        async def stop(app: Litestar) -> None:
            await backend.close()
            if api.notifier is not None:  # review decisions' events (MODERATION)
                await api.notifier.close()

        app_config.on_startup.append(start)
        app_config.on_shutdown.append(stop)
        return app_config

    def router(self, api: Api) -> Router:
        # The focal point's routes (subject.py) build on app.py's, so they join here, not in ROUTES.
        handlers: list[ControllerRouterHandler] = [*ROUTES, *subject.routes, *(pages.routes if self.page else ())]
        return Router(
            path=self.path,
            route_handlers=handlers,
            # the app's own first; then the Host (if asked), the Origin of a change; then, per route, the caller
            guards=[*self.guards, *((checked_host,) if self.check_host else ()), same_origin],
            opt={API_KEY: api},
            exception_handlers=EXCEPTION_HANDLERS,
            request_max_body_size=api.settings.max_bytes + FORM_OVERHEAD,
            tags=["images"],
        )

    def _backend(self, app_config: AppConfig) -> Backend:
        given = self.backend_given
        if isinstance(given, (S3Backend, StorageBackend)):
            return given
        storage = named_storage(app_config, given) if isinstance(given, str) else given
        pipeline = self.settings.pipeline
        return backend_for(storage, cache_control=pipeline.cache_control, max_attempts=pipeline.s3_max_attempts)


def named_storage(app_config: AppConfig, name: str) -> BaseStorage:
    """A storage registered with litestar-storages' `StoragePlugin` in this app, by its name
    (`default`, `images`) or its dependency's (`storage`, `images_storage`)."""
    from litestar_storages.contrib.plugin import StoragePlugin

    registered: dict[str, Any] = {}
    for plugin in app_config.plugins:
        if isinstance(plugin, StoragePlugin):
            registered.update(plugin.storages)
    wanted = "default" if name == "storage" else name.removesuffix("_storage") if name not in registered else name
    if wanted not in registered:
        known = ", ".join(sorted(registered)) or "none: add StoragePlugin(...) to the app's plugins"
        raise ValueError(f"no storage named {name!r} in the app's StoragePlugin (registered: {known})")
    storage: BaseStorage = registered[wanted]
    return storage


def settings_of(settings: ApiSettings | Settings | None = None, **options: Any) -> ApiSettings:
    """Settings from an object and/or keyword arguments, never from the environment: the defaults
    are what an empty environment gives (`ApiSettings.from_env({})`, the default variants)."""
    if isinstance(settings, ApiSettings):
        base = settings
    else:
        base = ApiSettings.from_env({}, need_bucket=False)
        if isinstance(settings, Settings):
            base = dataclasses.replace(base, pipeline=settings)
        elif settings is not None:
            raise TypeError(f"settings must be ApiSettings or Settings, not {type(settings).__name__}")
    pipeline_changes = {k: options.pop(k) for k in list(options) if k in _PIPELINE_FIELDS}
    if "max_bytes" in options:
        limits = pipeline_changes.get("limits", base.pipeline.limits)
        pipeline_changes["limits"] = dataclasses.replace(limits, max_bytes=options.pop("max_bytes"))
    if pipeline_changes:
        base = dataclasses.replace(base, pipeline=dataclasses.replace(base.pipeline, **pipeline_changes))
    ondemand = base.ondemand
    if "ondemand_widths" in options:
        widths: Iterable[int] = options.pop("ondemand_widths")
        ondemand = dataclasses.replace(ondemand, widths=frozenset(int(w) for w in widths))
    if "signing_key" in options:
        key = options.pop("signing_key")
        ondemand = dataclasses.replace(ondemand, signing_key=key.encode() if isinstance(key, str) else key)
    if ondemand is not base.ondemand:
        check = OnDemandSettings.from_env(
            {
                "ONDEMAND_WIDTHS": ",".join(str(w) for w in sorted(ondemand.widths)),
                "SIGNING_KEY": (ondemand.signing_key or b"").decode("utf-8", "replace"),
            }
        )
        base = dataclasses.replace(base, ondemand=dataclasses.replace(check, signing_key=ondemand.signing_key))
    unknown = sorted(set(options) - _API_FIELDS)
    if unknown:
        raise TypeError(f"unknown image pipeline setting(s): {', '.join(unknown)}")
    if options:
        for name in ("allowed_origins", "allowed_hosts"):
            if name in options:
                options[name] = tuple(options[name])
        base = dataclasses.replace(base, **options)
    if base.auth not in AUTH_MODES:
        raise ValueError(f"auth={base.auth!r} must be one of {', '.join(AUTH_MODES)}")
    return base
