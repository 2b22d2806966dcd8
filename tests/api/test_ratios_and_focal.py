"""Aspect ratios on request (`GET /images/{id}/w640-16x9.webp`) and the focal point set by hand
(`PUT`/`DELETE /images/{id}/focal`), through the API over moto server's S3 and over a directory:
the window's size and place (pixels), negotiation, signatures, no upscaling, the status body, and
crops made again around a point set by hand."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image, ImageDraw

from image_pipeline import ids
from image_pipeline.api.auth import make_token
from image_pipeline.ondemand.signing import sign
from image_pipeline.service import ObjectRef
from tests.images import encode

from .conftest import api_of

KEY = "k" * 40
VARIANTS = (
    "thumbnail:150x150:cover:webp;square:400x400:cover:auto:png;medium:800x800:webp;tall:300x600:cover:auto:png:lazy"
)
RED, BLUE, GREY = (230, 20, 20), (20, 40, 230), (128, 128, 128)


@pytest.fixture(params=["filesystem", "s3"])
def client(request, fs_client):
    build = fs_client if request.param == "filesystem" else request.getfixturevalue("s3_client")
    return lambda **env: build(**{"SIGNING_KEY": KEY, "VARIANTS": VARIANTS, **env})


def two_marks(width: int = 1200, height: int = 800) -> bytes:
    """Grey, a red square near the top-right corner and a blue one near the bottom-left: no 1:1
    window holds both, so where a crop was placed shows in its pixels."""
    picture = Image.new("RGB", (width, height), GREY)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((width - 150, 50, width - 50, 150), fill=RED)
    draw.rectangle((50, height - 150, 150, height - 50), fill=BLUE)
    return encode(picture, "PNG")


def upload(client, data: bytes | None = None, headers=None) -> dict:
    made = client.post("/images", files={"file": ("pic.png", data or two_marks(), "image/png")}, headers=headers or {})
    assert made.status_code == 201, made.text
    return made.json()


def fetch(client, url: str) -> Image.Image:
    response = client.get(url) if url.startswith("/") else httpx.get(url)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def get(client, image_id: str, leaf: str, **kwargs) -> Image.Image:
    answer = client.get(f"/images/{image_id}/{leaf}", follow_redirects=False, **kwargs)
    assert answer.status_code == 302, answer.text
    return fetch(client, answer.headers["location"])


def holds(picture: Image.Image, colour: tuple[int, int, int]) -> bool:
    """Whether some pixel is close to `colour` (lossy formats move it a little)."""
    rgb = picture.convert("RGB")
    small = rgb.resize((max(1, rgb.width // 4), max(1, rgb.height // 4)), Image.Resampling.BOX)
    return any(sum(abs(p - c) for p, c in zip(px, colour, strict=True)) < 60 for px in small.getdata())


def outputs(client) -> list[str]:
    store = api_of(client).store
    return [o.key for o in client.blocking_portal.call(store.list, "processed/") if not o.key.endswith("manifest.json")]


# -- ratio URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leaf", "fmt", "size"),
    [
        ("w640-16x9.webp", "WEBP", (640, 360)),
        ("w640-1x1.png", "PNG", (640, 640)),
        ("w256-9x16.jpg", "JPEG", (256, 455)),
        ("w3840-9x16.avif", "AVIF", (450, 800)),  # the 9:16 window is 450 wide: never upscaled
        ("w1920-21x9.png", "PNG", (1200, 514)),
    ],
)
def test_a_ratio_url_is_the_largest_window_of_that_ratio_made_once_and_stored(client, leaf, fmt, size):
    api = client()
    image = upload(api)
    picture = get(api, image["id"], leaf)
    assert (picture.format, picture.size) == (fmt, size)
    assert [k.rpartition("/")[2] for k in outputs(api) if "-" in k.rpartition("/")[2]] == [leaf]
    assert get(api, image["id"], leaf).size == size  # the stored one


@pytest.mark.parametrize(
    ("accept", "fmt", "leaf"),
    [
        ("image/avif,image/webp,*/*", "AVIF", "w640-16x9.avif"),
        ("image/webp,*/*", "WEBP", "w640-16x9.webp"),
        ("image/png,*/*;q=0.5", "JPEG", "w640-16x9"),  # the fallback: JPEG (no alpha)
    ],
)
def test_a_ratio_url_without_a_format_is_negotiated_and_varies_on_accept(client, accept, fmt, leaf):
    api = client()
    image = upload(api, encode(Image.open(io.BytesIO(two_marks())), "JPEG"))
    answer = api.get(f"/images/{image['id']}/w640-16x9", headers={"Accept": accept}, follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["vary"] == "Accept"
    picture = fetch(api, answer.headers["location"])
    assert (picture.format, picture.size) == (fmt, (640, 360))
    assert [k.rpartition("/")[2] for k in outputs(api) if "w640-" in k] == [leaf]


@pytest.mark.parametrize(
    ("leaf", "named"),
    [
        ("w640-32x18.webp", "use 16x9"),
        ("w640-1920x1080", "use 16x9"),
        ("w640-16X9.webp", "use 16x9"),
        ("w640-101x100.webp", "1 to 100"),
        ("w640-0x9.webp", "1 to 100"),
        ("w640-16x9.jpeg", "extension"),
        ("w640-wide.webp", "1 to 100"),
    ],
)
def test_bad_ratio_urls_are_400_problems_naming_the_spelling_that_touch_nothing(client, leaf, named):
    api = client()
    image = upload(api)
    before = outputs(api)
    answer = api.get(f"/images/{image['id']}/{leaf}")
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert named in answer.json()["detail"]
    assert outputs(api) == before


def test_other_ratios_need_a_signature(client):
    api = client()
    image = upload(api)
    path = f"/images/{image['id']}/w640-5x4.webp"
    refused = api.get(path)
    assert refused.status_code == 403 and "ratio 5x4" in refused.json()["detail"]
    assert not any("5x4" in k for k in outputs(api))
    picture = get(api, image["id"], "w640-5x4.webp?" + sign(KEY.encode(), path).partition("?")[2])
    assert picture.size == (640, 512)
    only = client(ONDEMAND_RATIOS="5x4", SIGNING_KEY="")
    other = upload(only)
    assert get(only, other["id"], "w640-5x4.webp").size == (640, 512)
    assert only.get(f"/images/{other['id']}/w640-16x9.webp").status_code == 403


def test_the_status_gives_the_subject_and_the_ratio_ladder(client):
    api = client()
    image = upload(api)
    assert image["focal_source"] == "attention" or image["focal_source"] == "faces"
    assert set(image["focal_point"]) == {"x", "y"}
    assert isinstance(image["faces"], list)
    ladder = image["ratio_urls"]
    assert ladder["template"].endswith(f"images/{image['id']}/w{{width}}-{{ratio}}.{{ext}}")
    assert ladder["ratios"] == ["1x1", "4x5", "3x4", "2x3", "9x16", "4x3", "3x2", "16x9", "21x9"]
    assert ladder["widths"] == image["width_urls"]["widths"] and ladder["fallback"] == "jpg"
    assert ladder["windows"]["16x9"] == [1200, 675] and ladder["windows"]["9x16"] == [450, 800]
    url = ladder["template"].format(width=640, ratio="4x5", ext="webp")
    assert fetch(
        api,
        api.get(url.partition("/images/")[1] + url.partition("/images/")[2], follow_redirects=False).headers[
            "location"
        ],
    ).size == (640, 800)


def test_with_a_cdn_the_ratio_ladder_points_at_the_cdn(client):
    api = client(PUBLIC_BASE_URL="https://cdn.example/")
    image = upload(api)
    assert (
        image["ratio_urls"]["template"]
        == f"https://cdn.example/processed/{image['id']}/pic/w{{width}}-{{ratio}}.{{ext}}"
    )


# -- the focal point set by hand -----------------------------------------------------------------


def test_a_focal_point_set_by_hand_is_kept_by_every_crop_and_survives_reprocessing(client):
    api = client()
    image = upload(api)
    iid = image["id"]
    before = get(api, iid, "w640-1x1.png")  # made on request, before the point is set
    assert get(api, iid, "tall").size == (300, 600)  # a lazy cover variant
    made = {k.rpartition("/")[2] for k in outputs(api)}
    assert {"w640-1x1.png", "tall.png"} <= made

    blue = api.put(f"/images/{iid}/focal", json={"x": 0.08, "y": 0.875})
    assert blue.status_code == 200, blue.text
    status = blue.json()
    assert status["focal_source"] == "manual" and status["focal_point"] == {"x": 0.08, "y": 0.875}
    left = {k.rpartition("/")[2] for k in outputs(api)}
    assert "w640-1x1.png" not in left and "tall.png" not in left  # deleted: made again on request
    assert made - left == {"w640-1x1.png", "tall.png"}
    for crop in (get(api, iid, "w640-1x1.png"), get(api, iid, "tall"), get(api, iid, "square")):
        assert holds(crop, BLUE) and not holds(crop, RED)  # the window around the point

    red = api.put(f"/images/{iid}/focal", json={"x": 1, "y": 0})  # the corner: as near as the window fits
    assert red.status_code == 200 and red.json()["focal_point"] == {"x": 1.0, "y": 0.0}
    for crop in (get(api, iid, "w640-1x1.png"), get(api, iid, "w256-9x16.png"), get(api, iid, "square")):
        assert holds(crop, RED) and not holds(crop, BLUE)

    # processed again (a backfill --all): the point set by hand stays with the upload
    service, store = api_of(api).service, api_of(api).store
    key = status["source"]["key"]
    api.blocking_portal.call(lambda: service.handle(store, ObjectRef(api_of(api).backend.bucket, key), force=True))
    again = api.get(f"/images/{iid}").json()
    assert again["focal_source"] == "manual" and again["focal_point"] == {"x": 1.0, "y": 0.0}
    assert holds(get(api, iid, "square"), RED) and holds(get(api, iid, "w640-1x1.png"), RED)

    back = api.delete(f"/images/{iid}/focal")
    assert back.status_code == 200 and back.json()["focal_source"] != "manual"
    assert not any(k.endswith(("w640-1x1.png", "w256-9x16.png", "tall.png")) for k in outputs(api))
    assert get(api, iid, "w640-1x1.png").size == before.size


@pytest.mark.parametrize(
    "body",
    [
        {"x": 1.5, "y": 0.5},
        {"x": -0.1, "y": 0.5},
        {"x": 0.5},
        {"y": 0.5},
        {},
        {"x": "0.5", "y": 0.5},
        {"x": True, "y": 0.5},
        {"x": None, "y": 0.5},
        {"x": [0.5], "y": 0.5},
        {"x": 0.5, "y": 0.5, "z": 1},
        [0.5, 0.5],
        "0.5,0.5",
    ],
)
def test_bad_bodies_are_400_and_change_nothing(client, body):
    api = client()
    image = upload(api)
    before = (subject_of(api, image["id"]), outputs(api))
    answer = api.put(f"/images/{image['id']}/focal", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json") and answer.json()["detail"]
    assert (subject_of(api, image["id"]), outputs(api)) == before


def subject_of(client, image_id: str) -> tuple:
    """What a focal point changes: the subject and the variants' bytes (not the presigned links)."""
    status = client.get(f"/images/{image_id}").json()
    variants = [(v["name"], v["bytes"]) for v in status["variants"]]
    return status["focal_point"], status["focal_source"], status["faces"], variants


@pytest.mark.parametrize(
    "raw", [b'{"x": NaN, "y": 0.5}', b'{"x": Infinity, "y": 0.5}', b'{"x": 1e999, "y": 0.5}', b"", b"{"]
)
def test_not_numbers_and_not_json_are_400(client, raw):
    api = client()
    image = upload(api)
    answer = api.put(f"/images/{image['id']}/focal", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text


def test_only_the_owner_or_an_admin_sets_the_focal_point(client):
    secret = "a-test-secret-of-at-least-32-bytes-0123456789"
    api = client(API_AUTH="jwt", JWT_SECRET=secret)
    alice = {"Authorization": "Bearer " + make_token(secret, "alice")}
    bob = {"Authorization": "Bearer " + make_token(secret, "bob")}
    admin = {"Authorization": "Bearer " + make_token(secret, "root", scope="images:admin")}
    image = upload(api, headers=alice)
    point = {"x": 0.1, "y": 0.9}
    assert api.put(f"/images/{image['id']}/focal", json=point, headers=bob).status_code == 404
    assert api.delete(f"/images/{image['id']}/focal", headers=bob).status_code == 404
    assert api.put(f"/images/{image['id']}/focal", json=point).status_code == 401
    assert api.get(f"/images/{image['id']}", headers=alice).json()["focal_source"] != "manual"
    assert api.put(f"/images/{image['id']}/focal", json=point, headers=alice).status_code == 200
    assert api.put(f"/images/{image['id']}/focal", json={"x": 0.9, "y": 0.1}, headers=admin).status_code == 200
    assert api.get(f"/images/{image['id']}", headers=alice).json()["focal_point"] == {"x": 0.9, "y": 0.1}


def test_a_missing_image_is_404_a_pending_or_failed_one_409(client):
    api = client()
    assert api.put("/images/00000000000000000000/focal", json={"x": 0.5, "y": 0.5}).status_code == 404
    assert api.put("/images/not-an-id/focal", json={"x": 0.5, "y": 0.5}).status_code == 404
    store, service = api_of(api).store, api_of(api).service
    pending, failed = ids.new_id(), ids.new_id()
    api.blocking_portal.call(store.write, f"raw/{pending}/pic.png", two_marks(), "image/png", {})
    key = f"raw/{failed}/notes.png"
    api.blocking_portal.call(store.write, key, b"text, not a picture", "image/png", {})
    api.blocking_portal.call(service.handle, store, ObjectRef(api_of(api).backend.bucket, key))
    for image_id, status in ((pending, "pending"), (failed, "failed")):
        assert api.get(f"/images/{image_id}").json()["status"] == status
        answer = api.put(f"/images/{image_id}/focal", json={"x": 0.5, "y": 0.5})
        assert answer.status_code == 409 and answer.json()["error_code"] == "not_processed"
        assert api.delete(f"/images/{image_id}/focal").status_code == 409
    assert outputs(api) == []
