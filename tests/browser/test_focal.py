"""The focal point on the page, in a real headless Chromium against `image-pipeline serve`: the
card shows the subject, a click on the picture sets the focal point, and the card's crops (a
`cover` variant made on upload, a ratio URL made on request) are shown again, cut around it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.browser.conftest import start_server
from tests.images import encode

RED, BLUE, GREY = (230, 20, 20), (20, 40, 230), (128, 128, 128)
NAME = "two-marks.png"
VARIANTS = "square:300x300:cover:auto:png;medium:800x800:webp"
PROCESSED = '[data-state="processed"][data-loaded="true"]'
SHOTS = os.environ.get("PAGE_SCREENSHOTS")  # a directory: keep the screenshots there too


def two_marks() -> bytes:
    """Grey, a red square near the top-right corner, a blue one near the bottom-left: no square
    window holds both, so a crop's colours say where it was placed."""
    picture = Image.new("RGB", (1200, 800), GREY)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((1050, 50, 1150, 150), fill=RED)
    draw.rectangle((50, 650, 150, 750), fill=BLUE)
    return encode(picture, "PNG")


def holds(shot: bytes, colour) -> bool:
    picture = Image.open(io.BytesIO(shot)).convert("RGB")
    return any(sum(abs(p - c) for p, c in zip(px, colour, strict=True)) < 60 for px in picture.getdata())


@pytest.fixture(scope="module", params=["s3", "filesystem"])
def server(browser, tmp_path_factory, request):
    """`serve` over its embedded S3 (presigned links) and over a directory (the same /files/ link
    before and after a crop is made again: the page must load it past the browser's caches)."""
    args = () if request.param == "s3" else ("--storage", str(tmp_path_factory.mktemp("images")))
    server = start_server(tmp_path_factory, *args, VARIANTS=VARIANTS)
    yield server
    server.stop()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    page.set_input_files("#files", [{"name": NAME, "mimeType": "image/png", "buffer": two_marks()}])
    page.locator(f".card{PROCESSED}").wait_for(timeout=60000)
    yield page
    assert not errors, errors
    context.close()


def crops_shown(page) -> None:
    """Every crop on the card loaded (the ones made again are fetched past the cache first)."""
    page.wait_for_function(
        """() => [...document.querySelectorAll(".card .crop img, .card .ratio-preview:not([hidden])")]
            .every((img) => img.src && img.complete && img.naturalWidth > 0)""",
        timeout=30000,
    )


def pick(page, x: float, y: float) -> dict:
    """Click the picture at (x, y) of its width and height; the status once the card is updated."""
    layer = page.locator(".card .subject")
    box = layer.bounding_box()
    with page.expect_response(lambda r: r.url.endswith("/focal") and r.request.method == "PUT") as answer:
        layer.click(position={"x": box["width"] * x, "y": box["height"] * y})
    assert answer.value.status == 200, answer.value.text()
    page.locator('.card[data-focal="manual"]').wait_for(timeout=30000)
    crops_shown(page)
    return answer.value.json()


def test_a_click_on_the_picture_sets_the_focal_point_and_the_crops_follow(page, server, tmp_path):
    card = page.locator(".card")
    layer = card.locator(".subject")
    assert layer.is_visible() and card.locator(".subject .focal").is_visible()
    # The ratio select offers the allowlisted ratios; 1:1 shows that crop and its srcset ladder.
    card.get_by_label("Ratio").select_option("1x1")
    crops_shown(page)
    snippet = card.locator("code.snippet").text_content()
    assert "-1x1.avif 640w" in snippet and "-1x1.jpg" in snippet and 'width="750" height="750"' in snippet

    status = pick(page, 0.08, 0.875)  # the blue square
    assert status["focal_source"] == "manual"
    assert abs(status["focal_point"]["x"] - 0.08) < 0.01 and abs(status["focal_point"]["y"] - 0.875) < 0.01
    square, ratio = card.locator('.crop img[data-variant="square"]'), card.locator(".ratio-preview")
    for crop in (square, ratio):
        shot = crop.screenshot()
        assert holds(shot, BLUE) and not holds(shot, RED)
    assert "set by hand" in card.locator(".subject-line").text_content()
    ring = card.locator(".subject .focal").bounding_box()
    frame = layer.bounding_box()
    assert abs((ring["x"] + ring["width"] / 2 - frame["x"]) / frame["width"] - 0.08) < 0.02

    status = pick(page, 0.92, 0.125)  # the red one
    for crop in (square, ratio):
        shot = crop.screenshot()
        assert holds(shot, RED) and not holds(shot, BLUE)
    assert server.url  # the page asked its own API: the status agrees
    assert page.request.get(f"{server.url}/images/{status['id']}").json()["focal_point"] == status["focal_point"]

    shots = Path(SHOTS) if SHOTS else tmp_path
    page.screenshot(path=str(shots / f"focal-desktop-{server.port}.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    card.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / f"focal-phone-{server.port}.png"), full_page=True)

    # In the gallery the picture is shown whole (contain) in a 4:3 cell: the subject sits on it.
    gallery = page.context.new_page()
    gallery.set_viewport_size({"width": 1280, "height": 900})
    gallery.goto(server.url + "/gallery")
    gallery.locator(f".card{PROCESSED}").wait_for(timeout=30000)
    layer_box = gallery.locator(".card .subject").bounding_box()
    assert abs(layer_box["width"] / layer_box["height"] - 1.5) < 0.02
    ring = gallery.locator(".card .subject .focal").bounding_box()
    assert abs((ring["x"] + ring["width"] / 2 - layer_box["x"]) / layer_box["width"] - 0.92) < 0.02
    assert abs((ring["y"] + ring["height"] / 2 - layer_box["y"]) / layer_box["height"] - 0.125) < 0.02
    gallery.wait_for_timeout(600)  # the preview fades in
    gallery.screenshot(path=str(shots / f"focal-gallery-{server.port}.png"))
    gallery.close()

    card.get_by_role("button", name="Use the detected subject").click()
    page.wait_for_function("() => document.querySelector('.card').dataset.focal !== 'saving'", timeout=30000)
    page.locator('.card[data-focal="attention"], .card[data-focal="faces"]').wait_for(timeout=30000)
