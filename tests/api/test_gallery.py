"""`GET /api/gallery` (the /gallery page's data): processed images from their manifests, newest
first, a page at a time, the same on S3 (moto server) and on a directory."""

from __future__ import annotations

import json

import httpx
import pytest

from image_pipeline.api import pages
from tests.images import decode, photo


@pytest.fixture(autouse=True)
def gallery_on(monkeypatch):
    monkeypatch.setattr(pages, "GALLERY_ENABLED", True)


@pytest.fixture(params=["filesystem", "s3"])
def client(request, fs_client):
    if request.param == "filesystem":
        return fs_client()
    return request.getfixturevalue("s3_client")()


def _upload(client, name: str, width: int) -> str:
    """One image through the synchronous path (processed in the request); its id."""
    sent = client.post("/images", files={"file": (name, photo(width, width * 2 // 3), "image/jpeg")})
    assert sent.status_code == 201, sent.text
    return sent.json()["id"]


def _fetch(client, url: str) -> bytes:
    response = client.get(url) if url.startswith("/") else httpx.get(url, timeout=30)
    assert response.status_code == 200, url
    return response.content


def test_gallery_pages_newest_first_with_each_images_facts(client, monkeypatch):
    monkeypatch.setattr(pages, "LIST_PAGE", 3)  # several listing requests per page of manifests
    made = [
        _upload(client, name, width) for name, width in (("first.jpg", 300), ("second.jpg", 450), ("third.jpg", 600))
    ]

    page = client.get("/api/gallery", params={"limit": 2})
    assert page.status_code == 200, page.text
    body = page.json()
    assert [i["id"] for i in body["items"]] == [made[2], made[1]]
    assert body["next_cursor"] == body["items"][-1]["key"]
    rest = client.get("/api/gallery", params={"limit": 2, "cursor": body["next_cursor"]}).json()
    assert [i["id"] for i in rest["items"]] == [made[0]]
    assert rest["next_cursor"] is None

    third = body["items"][0]
    assert third["name"] == "third.jpg" and third["status"] == "processed"
    assert (third["source"]["width"], third["source"]["height"], third["source"]["type"]) == (600, 400, "jpeg")
    assert third["placeholder"]["blurhash"] and third["placeholder"]["dominant_color"].startswith("#")
    by_name = {v["name"]: v for v in third["variants"]}
    assert set(by_name) == {"thumbnail", "medium", "large"}
    large = by_name["large"]
    assert large["url"] == f"/images/{made[2]}/large"  # stable, for the snippet
    assert decode(_fetch(client, large["src"])).size == (600, 400)  # direct, for showing it now
    assert large["bytes"] == len(_fetch(client, large["src"]))


def test_empty_gallery(client):
    assert client.get("/api/gallery").json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "raw/abc/manifest.json"},
        {"cursor": "processed/x/variant.webp"},
        {"cursor": "processed/\x01/manifest.json"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
    ],
)
def test_bad_paging_parameters_are_400(fs_client, params):
    answer = fs_client().get("/api/gallery", params=params)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_outputs_of_keys_not_uploaded_through_the_api_are_listed_with_direct_links(fs_client, tmp_path):
    """A backfilled raw/photos/2026/holiday.jpg has no id: its links are the files themselves."""
    client = fs_client()
    out = tmp_path / "images" / "processed" / "photos" / "2026" / "holiday"
    out.mkdir(parents=True)
    (out / "large.jpg").write_bytes(photo(300, 200))
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "source": {
                    "key": "raw/photos/2026/holiday.jpg",
                    "bytes": 9000,
                    "type": "jpeg",
                    "width": 300,
                    "height": 200,
                },
                "placeholder": {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "dominant_color": "#336699"},
                "variants": [
                    {
                        "name": "large",
                        "key": "processed/photos/2026/holiday/large.jpg",
                        "width": 300,
                        "height": 200,
                        "bytes": (out / "large.jpg").stat().st_size,
                        "content_type": "image/jpeg",
                    }
                ],
            }
        )
    )
    (out.parent / "broken").mkdir()
    (out.parent / "broken" / "manifest.json").write_text("{not json")
    items = client.get("/api/gallery").json()["items"]
    assert [(i["id"], i["name"]) for i in items] == [(None, "holiday.jpg")]  # the unreadable one is left out
    large = items[0]["variants"][0]
    assert large["url"] == large["src"] == "/files/processed/photos/2026/holiday/large.jpg"
    assert decode(_fetch(client, large["src"])).size == (300, 200)


def test_the_gallery_is_off_unless_asked_for(fs_client, monkeypatch):
    """Off, no id is listed (an open API would otherwise hand out every image and its DELETE)."""
    monkeypatch.setattr(pages, "GALLERY_ENABLED", False)
    client = fs_client()
    _upload(client, "private.jpg", 300)
    answer = client.get("/api/gallery")
    assert answer.status_code == 404
    assert "GALLERY=true" in answer.json()["detail"] and "private" not in answer.text
    assert client.get("/gallery").status_code == 200  # the page itself says why it is empty


@pytest.mark.parametrize("value,enabled", [("", False), ("false", False), ("off", False), ("TRUE", True), ("1", True)])
def test_gallery_setting(value, enabled):
    assert pages.gallery_setting({"GALLERY": value}) is enabled


def test_a_bad_gallery_setting_is_a_config_error():
    from image_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="GALLERY='maybe'"):
        pages.gallery_setting({"GALLERY": "maybe"})
