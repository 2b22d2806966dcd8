"""A Litestar app of your own with the image pipeline's upload API inside it (docs/litestar-plugin.md).

litestar --app docs.examples.litestar_app:create_app run    # or: python docs/examples/litestar_app.py
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from litestar import Litestar, Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.params import JSONBody
from litestar_storages import FileSystemConfig, FileSystemStorage

from image_pipeline.api import ImagePipelinePlugin


@dataclass
class Login:
    name: str


@get("/")
async def home(request: Request) -> dict[str, str | None]:
    """The app's own route: the plugin leaves it alone."""
    return {"app": "mine", "user": request.session.get("user")}


@post("/login")
async def login(request: Request, data: JSONBody[Login]) -> None:
    """A stand-in for your real login (a password, OAuth, …): it puts the user in the session."""
    request.set_session({"user": data.name, "admin": data.name == "root"})


def signed_in(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """The app's own guard: the plugin puts it before every route it adds."""
    if not connection.session.get("user"):
        raise NotAuthorizedException("sign in first")


def owner(connection: ASGIConnection) -> str | None:
    """Whose images these are: the signed-in user (None: nobody, 401)."""
    return connection.session.get("user")


def admin(connection: ASGIConnection) -> bool:
    """Who may see and delete everyone's images."""
    return connection.session.get("admin") is True


def create_app(directory: str | Path = "images") -> Litestar:
    storage = FileSystemStorage(FileSystemConfig(path=Path(directory), create_dirs=True))
    return Litestar(
        route_handlers=[home, login],
        middleware=[CookieBackendConfig(secret=secrets.token_bytes(16)).middleware],
        plugins=[
            ImagePipelinePlugin(
                storage=storage,
                path="/images",  # POST /images/images, GET /images/images/{id}, the page at /images/
                guards=[signed_in],
                owner=owner,
                admin=admin,
                page=True,
                max_bytes=20 * 1024 * 1024,  # any setting by name; or settings=ApiSettings.from_env()
            )
        ],
    )


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=8000)
