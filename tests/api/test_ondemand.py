"""Sizes on demand through the API (`GET /images/{id}/w640.webp`, `…/w640`, lazy variants), over
moto server's S3 and over a directory: made on the first request, stored under the image's output
prefix, found by one listing afterwards; signatures and bad paths refused before any storage call."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from image_pipeline import ids
from image_pipeline.api.auth import make_token
from image_pipeline.ondemand.signing import sign
from image_pipeline.service import ObjectRef
from tests.images import encode, photo

from .conftest import Recording, api_of

KEY = "k" * 40
LAZY = "thumbnail:150x150:cover:webp;medium:800x800:webp;xl:2400x2400:jpeg:lazy"


@pytest.fixture(params=["filesystem", "s3"])
def client(request, fs_client):
    """The API with on-demand settings, over each backend."""
    build = fs_client if request.param == "filesystem" else request.getfixturevalue("s3_client")
    return lambda **env: build(**{"SIGNING_KEY": KEY, "VARIANTS": LAZY, **env})


def upload(client, data: bytes | None = None, name: str = "pic.jpg", headers=None) -> dict:
    made = client.post("/images", files={"file": (name, data or photo(1200, 800), "image/jpeg")}, headers=headers or {})
    assert made.status_code == 201, made.text
    return made.json()


def fetch(client, url: str) -> Image.Image:
    """Follow a redirect the way a browser does (the API's /files/, or a presigned S3 GET)."""
    if url.startswith("/"):
        response = client.get(url)
    else:
        response = httpx.get(url)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def counting(client) -> list[int]:
    service = api_of(client).service
    calls, original = [], service._process

    async def spy(processor, data, **subject):
        calls.append(len(data))
        return await original(processor, data, **subject)

    service._process = spy
    return calls


def outputs(client) -> list[str]:
    store = api_of(client).store  # its client lives on the test client's loop
    return [o.key for o in client.blocking_portal.call(store.list, "processed/") if not o.key.endswith("manifest.json")]


def test_a_width_url_is_made_once_then_found_by_one_listing(client):
    api = client()
    image = upload(api)
    work = counting(api)

    first = api.get(f"/images/{image['id']}/w640.webp", follow_redirects=False)
    assert first.status_code == 302 and "Vary" not in first.headers
    picture = fetch(api, first.headers["location"])
    assert (picture.format, picture.size) == ("WEBP", (640, 427))
    assert len(work) == 1

    recording = Recording(api_of(api).backend.store)
    api_of(api).backend.store = recording
    again = api.get(f"/images/{image['id']}/w640.webp", follow_redirects=False)
    assert again.status_code == 302 and len(work) == 1  # no image work on a hit
    assert recording.calls == ["list"]  # one existence check


@pytest.mark.parametrize(
    ("accept", "fmt", "leaf"),
    [
        ("image/avif,image/webp,*/*", "AVIF", "w640.avif"),
        ("image/webp,*/*", "WEBP", "w640.webp"),
        ("image/png,*/*;q=0.5", "JPEG", "w640"),
    ],
)
def test_a_width_url_without_a_format_is_negotiated_and_varies_on_accept(client, accept, fmt, leaf):
    api = client()
    image = upload(api)
    answer = api.get(f"/images/{image['id']}/w640", headers={"Accept": accept}, follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["vary"] == "Accept"
    assert fetch(api, answer.headers["location"]).format == fmt
    assert [k.rpartition("/")[2] for k in outputs(api) if "/w640" in k] == [leaf]


def test_the_fallback_of_an_image_with_alpha_is_png(client):
    api = client()
    logo = Image.new("RGBA", (800, 400), (0, 0, 0, 0))
    logo.paste((200, 10, 10, 255), (400, 0, 800, 400))
    image = api.post("/images", files={"file": ("logo.png", encode(logo, "PNG"), "image/png")}).json()
    assert image["width_urls"]["fallback"] == "png"
    answer = api.get(f"/images/{image['id']}/w640", headers={"Accept": "image/png"}, follow_redirects=False)
    picture = fetch(api, answer.headers["location"])
    assert (picture.format, picture.mode) == ("PNG", "RGBA")
    assert picture.getpixel((5, 5))[3] == 0


def test_other_widths_need_a_signature_checked_before_any_storage_call(client):
    api = client()
    image = upload(api)
    path = f"/images/{image['id']}/w641.webp"
    recording = Recording(api_of(api).backend.store)
    api_of(api).backend.store = recording
    assert api.get(path).status_code == 403
    assert api.get(path + "?sig=" + "A" * 43).status_code == 403
    assert api.get(sign(KEY.encode(), f"/images/{image['id']}/w642.webp").replace("w642", "w641")).status_code == 403
    assert recording.calls == []
    signed = api.get(sign(KEY.encode(), path), follow_redirects=False)
    assert signed.status_code == 302
    assert fetch(api, signed.headers["location"]).width == 641


def test_without_a_signing_key_only_the_allowlist_works(client):
    api = client(SIGNING_KEY="")
    image = upload(api)
    refused = api.get(sign(KEY.encode(), f"/images/{image['id']}/w641.webp"))
    assert refused.status_code == 403 and "signing is off" in refused.json()["detail"]
    assert api.get(f"/images/{image['id']}/w256.jpg", follow_redirects=False).status_code == 302


@pytest.mark.parametrize("leaf", ["w0.webp", "w8193.webp", "wabc.webp", "w640.gif", "w640.webp.x", "w0640.jpg", "w64x"])
def test_bad_width_urls_are_400_problems_that_touch_nothing(client, leaf):
    api = client()
    image = upload(api)
    before = outputs(api)
    answer = api.get(f"/images/{image['id']}/{leaf}")
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/problem+json") and answer.json()["detail"]
    assert outputs(api) == before


def test_unknown_and_rejected_images_are_404(client):
    api = client()
    assert api.get("/images/00000000000000000000/w640.webp").status_code == 404
    assert api.get("/images/not-an-id/w640.webp").status_code == 404
    rejected = ids.new_id()
    store, key = api_of(api).store, f"raw/{rejected}/notes.jpg"  # an upload the pipeline rejected
    api.blocking_portal.call(store.write, key, b"text, not a picture", "image/jpeg", {})
    api.blocking_portal.call(api_of(api).service.handle, store, ObjectRef(api_of(api).backend.bucket, key))
    assert api.get(f"/images/{rejected}").json()["status"] == "failed"
    assert api.get(f"/images/{rejected}/w640.webp").status_code == 404
    assert outputs(api) == []


def test_never_upscaled_and_the_ladder_stops_at_the_image_width(client):
    api = client()
    image = upload(api, photo(1000, 500))
    assert image["width_urls"]["widths"][-1] == 828
    answer = api.get(f"/images/{image['id']}/w3840.jpg", follow_redirects=False)
    assert fetch(api, answer.headers["location"]).size == (1000, 500)


def test_a_lazy_variant_is_listed_as_not_made_then_made_on_its_first_request(client):
    api = client()
    image = upload(api, photo(3000, 2000))
    assert [v["name"] for v in image["variants"]] == ["thumbnail", "medium"]
    assert [(v["name"], v["made"]) for v in image["lazy_variants"]] == [("xl", False)]

    answer = api.get(f"/images/{image['id']}/xl", follow_redirects=False)
    assert answer.status_code == 302
    assert fetch(api, answer.headers["location"]).size == (2400, 1600)
    assert any(k.endswith("/pic/xl.jpg") for k in outputs(api))
    assert [(v["name"], v["made"]) for v in api.get(f"/images/{image['id']}").json()["lazy_variants"]] == [("xl", True)]


def test_eight_first_requests_at_once_make_it_once_and_store_one_object(client):
    api = client()
    image = upload(api)
    work = counting(api)
    app = api.app

    async def ask_together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=str(api.base_url)) as http:
            return await asyncio.gather(*(http.get(f"/images/{image['id']}/w1080.avif") for _ in range(8)))

    answers = api.blocking_portal.call(ask_together)
    assert {a.status_code for a in answers} == {302}
    assert len({a.headers["location"].split("?")[0] for a in answers}) == 1
    assert len(work) == 1  # single flight in the process
    assert len([k for k in outputs(api) if k.endswith("w1080.avif")]) == 1


def test_deleting_the_image_deletes_what_was_made_on_request(client):
    api = client()
    image = upload(api)
    for leaf in ("w640.webp", "w256", "xl", "w640-16x9.webp", "w256-1x1"):
        assert api.get(f"/images/{image['id']}/{leaf}", follow_redirects=False).status_code == 302
    assert api.delete(f"/images/{image['id']}").status_code == 204
    assert outputs(api) == []


def test_another_users_image_is_404_for_width_urls_too(client):
    secret = "a-test-secret-of-at-least-32-bytes-0123456789"
    api = client(API_AUTH="jwt", JWT_SECRET=secret)
    alice = {"Authorization": "Bearer " + make_token(secret, "alice")}
    bob = {"Authorization": "Bearer " + make_token(secret, "bob")}
    image = upload(api, headers=alice)
    assert api.get(f"/images/{image['id']}/w640.webp", headers=bob).status_code == 404
    assert api.get(f"/images/{image['id']}/w640.webp").status_code == 401
    assert api.get(f"/images/{image['id']}/w640.webp", headers=alice, follow_redirects=False).status_code == 302
    assert len([k for k in outputs(api) if "w640" in k]) == 1


def test_with_a_cdn_the_ladder_points_at_the_cdns_copy_of_the_image_prefix(client):
    api = client(PUBLIC_BASE_URL="https://cdn.example/")
    image = upload(api)
    assert image["width_urls"]["template"] == f"https://cdn.example/processed/{image['id']}/pic/w{{width}}.{{ext}}"
