"""The upload API inside a Litestar app that is not ours (`ImagePipelinePlugin`): its own route,
its own guard and its own idea of who is signed in (a header here), over litestar-storages'
FileSystemStorage, MemoryStorage and, on moto server, S3Storage."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
import time
import warnings

import httpx
import pytest
from litestar import Litestar, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.testing import TestClient
from litestar_storages import FileSystemConfig, FileSystemStorage, MemoryStorage, S3Config, S3Storage
from litestar_storages.contrib.plugin import StoragePlugin

from image_pipeline.api import ImagePipelinePlugin
from image_pipeline.api.local_events import LocalEventSource
from image_pipeline.service import STATUS_TAG
from tests.images import decode, photo

from .conftest import decode_policy

ALICE = {"x-user": "alice"}
BOB = {"x-user": "bob"}
ADMIN = {"x-user": "root", "x-role": "admin"}


@get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


def signed_in(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """The app's own guard: only a request that says who it is for."""
    if not connection.headers.get("x-user"):
        raise NotAuthorizedException("sign in first")


def _owner(connection: ASGIConnection) -> str | None:
    return connection.headers.get("x-user")


def _admin(connection: ASGIConnection) -> bool:
    return connection.headers.get("x-role") == "admin"


def their_app(storage, *, path: str = "/media", plugins: tuple = (), **options) -> Litestar:
    plugin = ImagePipelinePlugin(storage=storage, path=path, guards=[signed_in], owner=_owner, admin=_admin, **options)
    return Litestar(route_handlers=[hello], plugins=[*plugins, plugin])


@pytest.fixture(params=["filesystem", "memory"])
def storage(request, tmp_path):
    if request.param == "memory":
        return MemoryStorage()
    return FileSystemStorage(FileSystemConfig(path=tmp_path / "store", create_dirs=True))


def _keys(storage, prefix: str) -> list[str]:
    async def listed() -> list[str]:
        return sorted([f.key async for f in storage.list(prefix)])

    return asyncio.run(listed())


def _bytes(storage, key: str) -> bytes:
    return asyncio.run(storage.get_bytes(key))


def _until_done(client, url: str, headers: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url, headers=headers).json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def _upload(client, headers: dict, name: str = "a.jpg", size: tuple[int, int] = (640, 480)) -> dict:
    made = client.post("/media/images", files={"file": (name, photo(*size), "image/jpeg")}, headers=headers)
    assert made.status_code == 201, made.text
    return made.json()


def test_the_apps_own_route_answers_beside_the_plugins(storage):
    with TestClient(their_app(storage)) as client:
        assert client.get("/hello").json() == {"hello": "world"}  # no guard of ours on the app's routes
        schema = client.get("/schema/openapi.json").json()
    paths = schema["paths"]
    assert "/hello" in paths and "/media/images/{image_id}" in paths and "/media/uploads" in paths
    assert {"ImageInfo", "UploadGrant", "ImagePage", "JobAccepted"} <= set(schema["components"]["schemas"])
    assert "/media/uploads/local" not in paths  # the local form's target is no API of its own


def _plugin_routes(app: Litestar, prefix: str) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if not route.path.startswith(prefix):
            continue
        path = re.sub(r"\{image_id:str\}|\{job_id:str\}", "0000000000000-aaaaaaaaaaaaaaaa", route.path)
        path = re.sub(r"\{[a-z_]+:(str|path)\}", "x", path)
        for method in sorted(getattr(route, "methods", {"GET"}) - {"HEAD", "OPTIONS"}):
            found.append((method, path))
    return found


def test_without_the_apps_guard_every_plugin_route_is_refused(storage):
    app = their_app(storage, page=True)
    routes = _plugin_routes(app, "/media")
    assert len(routes) >= 14 and ("POST", "/media/images") in routes and ("GET", "/media") in routes
    with TestClient(app) as client:
        for method, path in routes:
            answer = client.request(method, path, json={"filename": "a.jpg", "content_type": "image/jpeg", "size": 9})
            assert answer.status_code == 401, (method, path, answer.text)
        assert _keys(storage, "raw/") == []


def test_two_owners_see_only_their_own_images_and_an_admin_sees_both(storage):
    with TestClient(their_app(storage)) as client:
        mine = _upload(client, ALICE, "mine.jpg")
        theirs = _upload(client, BOB, "theirs.jpg")
        assert client.get(f"/media/images/{mine['id']}", headers=BOB).status_code == 404
        assert client.delete(f"/media/images/{mine['id']}", headers=BOB).status_code == 404
        assert client.get(f"/media/images/{mine['id']}/medium", headers=BOB).status_code == 404
        assert [i["id"] for i in client.get("/media/images", headers=ALICE).json()["items"]] == [mine["id"]]
        assert [i["id"] for i in client.get("/media/images", headers=BOB).json()["items"]] == [theirs["id"]]
        everyone = {i["id"] for i in client.get("/media/images", headers=ADMIN).json()["items"]}
        assert everyone == {mine["id"], theirs["id"]}
        assert client.delete(f"/media/images/{mine['id']}", headers=ALICE).status_code == 204
        assert [k for k in _keys(storage, "") if mine["id"] in k] == []
        assert client.get(f"/media/images/{theirs['id']}", headers=BOB).json()["status"] == "processed"


def test_an_upload_is_processed_in_the_request_and_its_variants_are_in_the_given_storage(storage):
    with TestClient(their_app(storage)) as client:
        made = _upload(client, ALICE, "sea.jpg", (900, 600))
        assert made["status"] == "processed"
        variants = {v["name"]: v for v in made["variants"]}
        assert set(variants) == {"thumbnail", "medium", "large"}
        assert variants["large"]["url"] == f"/media/images/{made['id']}/large"
        stored = _keys(storage, f"processed/{made['id']}/")
        assert (
            f"processed/{made['id']}/sea/large.jpg" in stored and f"processed/{made['id']}/sea/manifest.json" in stored
        )
        assert decode(_bytes(storage, f"processed/{made['id']}/sea/large.jpg")).size == (900, 600)
        manifest = json.loads(_bytes(storage, f"processed/{made['id']}/sea/manifest.json"))
        assert manifest["source"]["key"] == f"raw/{made['id']}/sea.jpg"
        # the stable URL redirects to the bytes, served under the mount
        redirect = client.get(variants["large"]["url"], headers=ALICE, follow_redirects=False)
        assert redirect.status_code == 302
        assert redirect.headers["location"] == f"/media/files/processed/{made['id']}/sea/large.jpg"
        served = client.get(redirect.headers["location"], headers=ALICE)
        assert served.status_code == 200 and decode(served.content).size == (900, 600)
        # a width URL is made on its first request, into the same storage
        width = client.get(f"/media/images/{made['id']}/w256.webp", headers=ALICE, follow_redirects=False)
        assert width.status_code == 302, width.text
        assert f"processed/{made['id']}/sea/w256.webp" in _keys(storage, f"processed/{made['id']}/")


def test_background_and_direct_uploads_are_processed_by_the_in_process_worker(storage):
    with TestClient(their_app(storage)) as client:
        job = client.post(
            "/media/images/async", files={"file": ("bg.png", photo(320, 240, "PNG"), "image/png")}, headers=ALICE
        )
        assert job.status_code == 202, job.text
        assert job.json()["status_url"] == f"/media/images/jobs/{job.json()['job_id']}"
        done = _until_done(client, job.json()["status_url"], ALICE)
        assert done["status"] == "processed" and done["source"]["type"] == "png"
        assert any(k.endswith("/bg/thumbnail.webp") for k in _keys(storage, f"processed/{done['id']}/"))

        data = photo(500, 400)
        grant = client.post(
            "/media/uploads", json={"filename": "d.jpg", "content_type": "image/jpeg", "size": len(data)}, headers=ALICE
        )
        assert grant.status_code == 201, grant.text
        upload = grant.json()["upload"]
        assert upload["url"] == "/media/uploads/local"
        sent = client.post(
            upload["url"], data=upload["fields"], files={"file": ("d.jpg", data, "image/jpeg")}, headers=ALICE
        )
        assert sent.status_code == 204, sent.text
        assert _until_done(client, grant.json()["status_url"], ALICE)["status"] == "processed"


def test_bad_input_is_a_problem_and_nothing_is_stored(storage):
    with TestClient(their_app(storage, max_bytes=50_000)) as client:
        odd = client.post(
            "/media/images", files={"file": ("a.jpg", b"not an image at all", "image/jpeg")}, headers=ALICE
        )
        assert odd.status_code == 415 and odd.headers["content-type"].startswith("application/problem+json")
        big = client.post("/media/images", files={"file": ("a.jpg", b"\xff" * 60_000, "image/jpeg")}, headers=ALICE)
        assert big.status_code == 413 and big.json()["error_code"] == "too_large"
        nobody = client.get("/media/images", headers={"x-user": "\x07bell"})
        assert nobody.status_code == 401
        cross = client.post(
            "/media/images",
            files={"file": ("a.jpg", photo(50, 50), "image/jpeg")},
            headers={**ALICE, "origin": "https://elsewhere.example"},
        )
        assert cross.status_code == 403
        assert _keys(storage, "raw/") == []


def test_the_page_is_served_under_the_mount_with_its_base(storage):
    with TestClient(their_app(storage, page=True)) as client:
        for path in ("/media", "/media/"):
            page = client.get(path, headers=ALICE)
            assert page.status_code == 200 and '<base href="/media/">' in page.text
        assert client.get("/media/static/upload.js", headers=ALICE).status_code == 200
        gallery = client.get("/media/api/gallery", headers=ALICE)
        assert gallery.status_code == 200 and gallery.json()["items"] == []


def test_a_storage_registered_with_storage_plugin_is_found_by_its_name():
    images = MemoryStorage()
    app = their_app("images", plugins=(StoragePlugin(default=MemoryStorage(), images=images),))
    with TestClient(app) as client:
        made = _upload(client, ALICE)
    assert any(k.endswith("/manifest.json") for k in _keys(images, f"processed/{made['id']}/"))
    with pytest.raises(ValueError, match="no storage named 'nope'"):
        their_app("nope", plugins=(StoragePlugin(images=images),))


def test_two_plugins_in_one_app_keep_their_own_storage_and_settings():
    first, second = MemoryStorage(), MemoryStorage()
    app = Litestar(
        route_handlers=[hello],
        plugins=[
            ImagePipelinePlugin(first, path="/a", owner=_owner),
            ImagePipelinePlugin(second, path="/b", owner=_owner, raw_prefix="uploads/", processed_prefix="out/"),
        ],
    )
    with TestClient(app) as client:
        a = client.post("/a/images", files={"file": ("a.jpg", photo(64, 48), "image/jpeg")}, headers=ALICE).json()
        b = client.post("/b/images", files={"file": ("b.jpg", photo(64, 48), "image/jpeg")}, headers=ALICE).json()
        assert a["variants"][0]["url"].startswith(f"/a/images/{a['id']}/")
        assert b["variants"][0]["url"].startswith(f"/b/images/{b['id']}/")
        assert [i["id"] for i in client.get("/a/images", headers=ALICE).json()["items"]] == [a["id"]]
        assert [i["id"] for i in client.get("/b/images", headers=ALICE).json()["items"]] == [b["id"]]
    assert _keys(first, "raw/") == [f"raw/{a['id']}/a.jpg"] and _keys(second, "raw/") == []
    assert _keys(second, "uploads/") == [f"uploads/{b['id']}/b.jpg"] and _keys(second, "out/")


async def _serving(app: Litestar, exercise) -> list[asyncio.Task]:
    """The app on this loop as a server runs it: the ASGI lifespan's startup, requests (httpx over
    ASGI), the lifespan's shutdown. The tasks left on the loop afterwards."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        await exercise(client)
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await lifespan
    await asyncio.sleep(0)
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def _open_sessions() -> set[int]:
    """The HTTP client sessions (aiohttp, under aioboto3) of this process not closed yet."""
    import aiohttp

    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed}


def _lifecycle(app: Litestar, exercise) -> None:
    """Start the app, run `exercise(client)`, stop it: with warnings as errors, no task of the
    app left on the loop, no client session left open, nothing reported unraisable."""
    unraisable: list[str] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = lambda hook: unraisable.append(f"{hook.exc_value!r} {hook.object!r}")
    sessions = _open_sessions()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            left = asyncio.run(_serving(app, exercise))
            gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    assert left == []
    assert unraisable == []
    assert _open_sessions() - sessions == set()


def test_the_app_shuts_down_cleanly(storage):
    async def exercise(client) -> None:
        made = await client.post("/media/images", files={"file": ("a.jpg", photo(64, 48), "image/jpeg")}, headers=ALICE)
        assert made.status_code == 201
        job = await client.post(
            "/media/images/async", files={"file": ("b.jpg", photo(64, 48), "image/jpeg")}, headers=ALICE
        )
        assert job.status_code == 202

    _lifecycle(their_app(storage), exercise)


# --- S3Storage on moto server ----------------------------------------------------------------


def _s3_storage(bucket: str, endpoint: str) -> S3Storage:
    return S3Storage(S3Config(bucket=bucket, endpoint_url=endpoint, region="us-east-1"))


def test_on_s3_storage_uploads_are_presigned_posts_processed_on_the_s3_event(moto_server, bucket, s3, handler):
    with TestClient(their_app(_s3_storage(bucket, moto_server))) as client:
        data = photo(1000, 750)
        grant = client.post(
            "/media/uploads",
            json={"filename": "dog.jpg", "content_type": "image/jpeg", "size": len(data)},
            headers=ALICE,
        )
        assert grant.status_code == 201, grant.text
        body = grant.json()
        upload = body["upload"]
        assert upload["url"].startswith(moto_server)  # straight to S3, never through the app
        policy = decode_policy(upload["fields"])
        assert {"x-amz-meta-owner": upload["fields"]["x-amz-meta-owner"]} in policy["conditions"]
        sent = httpx.post(
            upload["url"], data=upload["fields"], files={"file": ("dog.jpg", data, "image/jpeg")}, timeout=30
        )
        assert sent.status_code == 204, sent.text
        assert body["status_url"] == f"/media/images/{body['id']}"
        assert client.get(body["status_url"], headers=ALICE).json()["status"] == "pending"
        assert client.get(body["status_url"], headers=BOB).status_code == 404

        # S3's ObjectCreated event, to the pipeline's own function (as deployed beside the bucket)
        assert LocalEventSource("unused", bucket).poll_once(s3, handler.lambda_handler) == 1
        done = client.get(body["status_url"], headers=ALICE).json()
        assert done["status"] == "processed" and done["source"]["width"] == 1000
        tags = s3.get_object_tagging(Bucket=bucket, Key=f"raw/{body['id']}/dog.jpg")["TagSet"]
        assert {"Key": STATUS_TAG, "Value": "processed"} in tags

        made = client.post("/media/images", files={"file": ("cat.jpg", photo(300, 200), "image/jpeg")}, headers=BOB)
        assert made.status_code == 201 and made.json()["status"] == "processed"  # in the request, in-process
        listed = [
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"processed/{made.json()['id']}/")["Contents"]
        ]
        assert f"processed/{made.json()['id']}/cat/thumbnail.webp" in listed
        src = next(v for v in made.json()["variants"] if v["name"] == "medium")["src"]
        assert src.startswith(moto_server) and httpx.get(src, timeout=10).status_code == 200  # presigned GET


def test_on_s3_storage_every_route_is_guarded_and_the_app_shuts_down_cleanly(moto_server, bucket):
    app = their_app(_s3_storage(bucket, moto_server))
    refused = _plugin_routes(app, "/media")

    async def exercise(client) -> None:
        for method, path in refused:
            assert (await client.request(method, path)).status_code == 401
        made = await client.post("/media/images", files={"file": ("a.jpg", photo(64, 48), "image/jpeg")}, headers=ALICE)
        assert made.status_code == 201, made.text

    _lifecycle(app, exercise)


def test_an_s3_storage_with_a_prefix_is_refused_with_what_to_do_instead(moto_server, bucket):
    storage = S3Storage(S3Config(bucket=bucket, endpoint_url=moto_server, prefix="app/"))
    with pytest.raises(ValueError, match="raw_prefix= and processed_prefix="):
        their_app(storage)


def test_settings_come_from_an_object_or_by_name_never_from_the_environment(monkeypatch):
    from image_pipeline.api import ApiSettings
    from image_pipeline.errors import ConfigError
    from image_pipeline.settings import Settings

    monkeypatch.setenv("MAX_INPUT_BYTES", "1234")
    monkeypatch.setenv("VARIANTS", "only:10x10:webp")
    plugin = ImagePipelinePlugin(MemoryStorage(), owner=_owner, max_bytes=5000, ondemand_widths=[100, 200])
    assert plugin.settings.max_bytes == 5000 and [v.name for v in plugin.settings.pipeline.variants] == [
        "thumbnail",
        "medium",
        "large",
    ]
    assert plugin.settings.ondemand.widths == frozenset({100, 200})
    pipeline = Settings.from_env({"VARIANTS": "one:64x64:webp"})
    assert [v.name for v in ImagePipelinePlugin(MemoryStorage(), settings=pipeline).settings.pipeline.variants] == [
        "one"
    ]
    from_env = ImagePipelinePlugin(MemoryStorage(), settings=ApiSettings.from_env(need_bucket=False))
    assert from_env.settings.max_bytes == 1234  # read because it was asked for
    with pytest.raises(TypeError, match="unknown image pipeline setting"):
        ImagePipelinePlugin(MemoryStorage(), max_byte=1)
    with pytest.raises(ConfigError, match="SIGNING_KEY"):
        ImagePipelinePlugin(MemoryStorage(), signing_key="short")
    with pytest.raises(ValueError, match="auth="):
        ImagePipelinePlugin(MemoryStorage(), auth="anyone")
    with pytest.raises(ValueError, match="owner="):
        ImagePipelinePlugin(MemoryStorage(), admin=_admin)


def test_without_owner_the_apis_own_auth_applies_and_the_host_check_is_optional():
    from image_pipeline.api.auth import make_token

    secret = "s" * 32
    plugin = ImagePipelinePlugin(MemoryStorage(), jwt_secret=secret, check_host=True, allowed_hosts=["api.test"])
    with TestClient(Litestar(route_handlers=[hello], plugins=[plugin]), base_url="http://api.test") as client:
        assert client.get("/images/images").status_code == 401  # API_AUTH=jwt: a bearer token is needed
        token = {"authorization": f"Bearer {make_token(secret, 'alice')}"}
        assert client.get("/images/images", headers=token).json() == {"items": [], "next_cursor": None}
        assert client.get("/images/images", headers={**token, "host": "rebind.example"}).status_code == 400
        assert client.get("/hello", headers={"host": "rebind.example"}).status_code == 200  # the app's own: its call
