"""What a front end builds image URLs with: the Next.js loader (static/next-loader.js, run in node)
and `image_pipeline.urls` (srcset, signing), each URL then asked of a real app with the plugin."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from litestar_storages import MemoryStorage

from image_pipeline.api import ImagePipelinePlugin
from image_pipeline.ondemand.paths import DEFAULT_WIDTHS
from image_pipeline.urls import srcset, width_url
from tests.cloudfront import node
from tests.images import decode, photo

LOADER = Path(__file__).resolve().parents[2] / "handler" / "image_pipeline" / "api" / "static" / "next-loader.js"
KEY = "k" * 40
# Next.js's defaults (next/dist/shared/lib/image-config.js): deviceSizes, then imageSizes.
NEXT_DEVICE_SIZES = [640, 750, 828, 1080, 1200, 1920, 2048, 3840]
NEXT_IMAGE_SIZES = [16, 32, 48, 64, 96, 128, 256, 384]

_HARNESS = """
const fs = require("fs");
const source = fs.readFileSync(process.argv[1], "utf8");
import("data:text/javascript," + encodeURIComponent(source)).then((loader) => {
  const calls = JSON.parse(fs.readFileSync(0, "utf8"));
  const out = calls.map((call) => {
    try { return loader.default(call); } catch (error) { return {error: String(error.message)}; }
  });
  process.stdout.write(JSON.stringify({out, named: loader.imagePipelineLoader === loader.default}));
});
"""


def _loader(calls: list[dict]) -> list:
    done = subprocess.run(
        [node(), "-e", _HARNESS, str(LOADER)],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["named"]
    return result["out"]


def test_the_default_widths_are_next_js_sizes_so_the_loader_needs_no_configuration():
    assert sorted(DEFAULT_WIDTHS) == sorted(NEXT_DEVICE_SIZES + NEXT_IMAGE_SIZES)


def test_the_loader_makes_width_urls_from_what_the_api_hands_out():
    calls = [
        {"src": "/images/images/ID/w{width}.{ext}", "width": 640, "quality": 75},
        {"src": "https://cdn.example/processed/ID/sea/w{width}.{ext}", "width": 16},
        {"src": "/media/images/ID/w1080.webp", "width": 384},
        {"src": "https://cdn.example/processed/ID/sea/w640", "width": 1920},
        {"src": "/images/images/ID/", "width": 828},
        {"src": "/images/images/ID/medium", "width": 640},
        {"src": "/x/w{width}.{ext}", "width": 0},
        {"src": "", "width": 640},
    ]
    assert _loader(calls) == [
        "/images/images/ID/w640",
        "https://cdn.example/processed/ID/sea/w16",
        "/media/images/ID/w384.webp",
        "https://cdn.example/processed/ID/sea/w1920",
        "/images/images/ID/w828",
        {"error": "image-pipeline loader: /images/images/ID/medium is neither a width URL template nor a width URL"},
        {"error": "image-pipeline loader: width must be a whole number of pixels, not 0"},
        {"error": "image-pipeline loader: src must be an image's width_urls.template or width URL"},
    ]


@pytest.fixture
def app_client():
    app = Litestar(
        plugins=[ImagePipelinePlugin(MemoryStorage(), path="/media", owner=lambda c: "alice", signing_key=KEY)]
    )
    with TestClient(app) as client:
        made = client.post("/media/images", files={"file": ("sea.jpg", photo(900, 600), "image/jpeg")})
        assert made.status_code == 201, made.text
        yield client, made.json()


def _fetched(client, url: str, accept: str = "image/avif,image/webp,*/*"):
    redirect = client.get(url, headers={"accept": accept}, follow_redirects=False)
    assert redirect.status_code == 302, (url, redirect.text)
    got = client.get(redirect.headers["location"])
    assert got.status_code == 200
    return decode(got.content), got.headers["content-type"]


def test_the_loaders_urls_are_answered_by_the_api_with_the_width_asked_for(app_client):
    client, info = app_client
    template = info["width_urls"]["template"]
    assert template == f"/media/images/{info['id']}/w{{width}}.{{ext}}"
    urls = _loader([{"src": template, "width": w} for w in (256, 640, 1080)])
    for url, width in zip(urls, (256, 640, 1080), strict=True):
        image, content_type = _fetched(client, url, accept="image/webp,*/*")
        assert image.size[0] == min(width, 900) and content_type == "image/webp"  # never upscaled


def test_srcset_lists_the_images_widths_and_signs_only_the_others(app_client):
    client, info = app_client
    width_urls = info["width_urls"]
    assert width_urls["widths"] == [w for w in sorted(DEFAULT_WIDTHS) if w <= 900]
    made = srcset(width_urls)
    entries = [entry.rsplit(" ", 1) for entry in made.split(", ")]
    assert [int(size[:-1]) for _, size in entries] == width_urls["widths"]
    assert all("sig=" not in url for url, _ in entries)
    assert _fetched(client, entries[0][0], accept="image/png")[0].size[0] == 16

    jpeg = srcset(width_urls, [300, 640], "jpg", signing_key=KEY)
    (odd, odd_size), (even, _) = (entry.rsplit(" ", 1) for entry in jpeg.split(", "))
    assert odd_size == "300w" and re.fullmatch(rf"/media/images/{info['id']}/w300\.jpg\?sig=[\w-]{{43}}", odd)
    assert even == f"/media/images/{info['id']}/w640.jpg"
    image, content_type = _fetched(client, odd)
    assert image.size == (300, 200) and content_type == "image/jpeg"
    unsigned = client.get(width_url(width_urls, 300, "jpg", allowed=[300]), follow_redirects=False)
    assert unsigned.status_code == 403  # the app's allowlist does not have it: the signature is what allows it
    with pytest.raises(ValueError, match="outside the allowlist"):
        width_url(width_urls, 300)
    with pytest.raises(ValueError, match="not a width URL template"):
        srcset("/media/images/x/medium")


def test_srcset_of_a_ratio_gives_its_windows_and_signs_what_the_allowlists_do_not_hold(app_client):
    client, info = app_client
    ratio_urls = info["ratio_urls"]
    assert "{ratio}" in ratio_urls["template"]
    square = srcset(ratio_urls, [64, 640], "webp", ratio="1x1")
    (small, small_size), (large, _) = (entry.rsplit(" ", 1) for entry in square.split(", "))
    assert small_size == "64w" and small == f"/media/images/{info['id']}/w64-1x1.webp"
    assert "sig=" not in large
    assert _fetched(client, small)[0].size == (64, 64)
    assert _fetched(client, large)[0].size == (600, 600)  # the 900×600 picture's largest 1:1 window, not upscaled

    # 5:7 is not in ONDEMAND_RATIOS: signed, and then made
    tall = width_url(ratio_urls, 100, "jpg", ratio="5x7", signing_key=KEY)
    assert re.fullmatch(rf"/media/images/{info['id']}/w100-5x7\.jpg\?sig=[\w-]{{43}}", tall)
    assert _fetched(client, tall)[0].size == (100, 140)
    with pytest.raises(ValueError, match="ratio 5x7 is outside the allowlist"):
        width_url(ratio_urls, 640, ratio="5x7")
    with pytest.raises(ValueError, match="16x9"):
        width_url(ratio_urls, 100, ratio="32x18")  # one spelling per ratio, named
    with pytest.raises(ValueError, match="needs ratio="):
        srcset(ratio_urls)
    with pytest.raises(ValueError, match=r"has no \{ratio\}"):
        width_url(info["width_urls"], 100, ratio="1x1")
