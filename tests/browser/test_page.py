"""The upload page and the gallery in a real headless Chromium, against `image-pipeline serve`.

One module-wide server (embedded S3 + local event source, as `serve` starts with no flags) and one
round of uploads through the file input; the tests then look at what a person would see.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from PIL import Image, ImageFilter, ImageStat
from playwright.sync_api import expect

from image_pipeline.ids import owner_tag
from tests.browser.conftest import start_server
from tests.browser.test_blurhash import _reference_decode
from tests.images import encode

MAX_BYTES = 2_000_000
ORANGE, TEAL = (232, 120, 32), (24, 138, 150)
PHOTO_NAME, SECOND_NAME, TEXT_NAME, HUGE_NAME = "sunset-over-sea.jpg", "harbour_at-dusk.png", "notes.jpg", "huge.jpg"
SCREENSHOTS = os.environ.get("PAGE_SCREENSHOTS")  # a directory: also write the README's screenshot there
PROCESSED = '[data-state="processed"][data-loaded="true"]'
# The default variants plus an AVIF one, so the snippet has every kind of <source>.
VARIANTS = "thumbnail:150x150:cover:webp;small:480x480:avif;medium:800x800:webp;large:1920x1920:jpeg"


def two_tone(width: int, height: int, top, bottom) -> Image.Image:
    """An orange sky over a teal sea, with texture: compresses like a photo, colours easy to check."""
    half = (width, height // 2)
    fade = Image.linear_gradient("L").resize(half)  # darker towards the horizon and the bottom

    def shaded(colour):
        return Image.composite(
            Image.new("RGB", half, tuple(c * 8 // 10 for c in colour)),
            Image.new("RGB", half, tuple(min(255, c * 11 // 10) for c in colour)),
            fade,
        )

    image = Image.new("RGB", (width, height))
    image.paste(shaded(top), (0, 0))
    image.paste(shaded(bottom), (0, height // 2))
    noise = Image.effect_noise((width, height), 40).filter(ImageFilter.GaussianBlur(2))
    return Image.blend(image, Image.merge("RGB", (noise, noise, noise)), 0.12)


PHOTO = encode(two_tone(1200, 800, ORANGE, TEAL), "JPEG", quality=88)
SECOND = encode(two_tone(900, 600, TEAL, ORANGE), "PNG")


def near(colour, expected, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


def mean(image: Image.Image) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(image.convert("RGB")).mean)


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    server = start_server(tmp_path_factory, MAX_INPUT_BYTES=str(MAX_BYTES), VARIANTS=VARIANTS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def context(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    yield context
    context.close()


def card(page, name: str):
    """A card found the way a screen reader finds it: the list item named by its file name."""
    return page.get_by_role("listitem", name=name, exact=True)


@pytest.fixture(scope="module")
def uploaded(context, server):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Every value the progress bars announce, as they change.
    page.add_init_script(
        """window.progressSeen = [];
        new MutationObserver((records) => records.forEach((r) => window.progressSeen.push(
            r.target.getAttribute("aria-valuetext"))))
            .observe(document, {subtree: true, attributeFilter: ["aria-valuetext"]});"""
    )
    page.goto(server.url + "/")
    page.set_input_files(
        "#files",
        [
            {"name": PHOTO_NAME, "mimeType": "image/jpeg", "buffer": PHOTO},
            {"name": SECOND_NAME, "mimeType": "image/png", "buffer": SECOND},
            {"name": TEXT_NAME, "mimeType": "image/jpeg", "buffer": b"meeting notes, not a photo\n" * 20},
            {"name": HUGE_NAME, "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff" + bytes(MAX_BYTES)},
        ],
    )
    for name, state in [
        (PHOTO_NAME, PROCESSED),
        (SECOND_NAME, PROCESSED),
        (TEXT_NAME, '[data-state="failed"]'),
        (HUGE_NAME, '[data-state="failed"]'),
    ]:
        page.locator(f".card{state}", has=page.get_by_role("heading", name=name, exact=True)).wait_for(timeout=45000)
    assert not errors, errors
    yield page
    page.close()


def test_processed_card_shows_the_photo(uploaded):
    frame = card(uploaded, PHOTO_NAME).locator(".frame")
    shot = Image.open(io.BytesIO(frame.screenshot()))
    width, height = shot.size
    assert abs(width / height - 1.5) < 0.02, "the preview keeps the photo's 3:2 shape"
    top = shot.crop((0, height // 10, width, height * 4 // 10))
    bottom = shot.crop((0, height * 6 // 10, width, height * 9 // 10))
    assert near(mean(top), ORANGE), f"top of the preview is {mean(top)}, not the photo's orange"
    assert near(mean(bottom), TEAL), f"bottom of the preview is {mean(bottom)}, not the photo's teal"
    assert max(ImageStat.Stat(shot.convert("RGB")).stddev) > 40, "the preview is blank"
    alt = card(uploaded, PHOTO_NAME).get_by_role("img", name="sunset over sea")
    assert alt.count() == 1, "the preview's alt text comes from the file name"


def test_blurhash_placeholder_is_painted_at_the_photos_shape(uploaded):
    painted = (
        card(uploaded, PHOTO_NAME)
        .locator("canvas.placeholder")
        .evaluate(
            """(canvas) => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            const middle = (y) => 4 * (y * canvas.width + (canvas.width >> 1));
            const at = (y) => Array.from(data.slice(middle(y), middle(y) + 3));
            return {w: canvas.width, h: canvas.height, top: at(2), bottom: at(canvas.height - 3)};
        }"""
        )
    )
    assert (painted["w"], painted["h"]) == (32, 21)
    assert near(painted["top"], ORANGE, 60) and near(painted["bottom"], TEAL, 60), painted


def test_while_processing_the_card_shows_the_files_own_blurhash(uploaded):
    """Computed in the browser from the picked file: close to the one the pipeline writes."""
    photo = card(uploaded, PHOTO_NAME)
    local, final = photo.get_attribute("data-local-blurhash"), photo.get_attribute("data-blurhash")
    assert local and final and photo.get_attribute("data-placeholder-from") == "manifest"
    a, b = _reference_decode(local, 12, 8), _reference_decode(final, 12, 8)
    worst = max(abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True))
    assert worst < 40, (local, final)
    assert near(a[12 + 6], ORANGE, 60) and near(a[12 * 6 + 6], TEAL, 60)


def test_variants_facts_and_saving(uploaded, server):
    image_id = card(uploaded, PHOTO_NAME).get_attribute("data-image-id")
    status = uploaded.request.get(f"{server.url}/images/{image_id}").json()
    rows = card(uploaded, PHOTO_NAME).locator("table.facts tbody tr")
    assert rows.count() == len(status["variants"]) >= 2
    for i, variant in enumerate(status["variants"]):
        cells = rows.nth(i).locator("th, td").all_text_contents()
        assert cells[0] == variant["name"]
        assert cells[1] == f"{variant['width']}×{variant['height']}"
        assert cells[2].endswith("B")
        assert cells[3] in {"WebP", "JPEG", "AVIF", "PNG", "GIF"}
        saved = round((1 - variant["bytes"] / status["source"]["bytes"]) * 100)
        assert cells[4] == (f"−{saved}%" if saved > 0 else f"+{-saved}%" if saved < 0 else "0%")
    caption = card(uploaded, PHOTO_NAME).locator("table.facts caption").text_content()
    assert caption.startswith("Original: 1200×800")


def test_snippet_is_ready_to_paste_and_copies(uploaded, server, context):
    photo = card(uploaded, PHOTO_NAME)
    image_id = photo.get_attribute("data-image-id")
    status = uploaded.request.get(f"{server.url}/images/{image_id}").json()
    snippet = photo.locator("code.snippet").text_content()
    assert snippet.startswith("<picture>\n") and snippet.endswith("\n</picture>")
    # Sizes on demand: every allowlisted width up to the photo's own, in AVIF, WebP and the fallback.
    ladder = status["width_urls"]
    assert ladder["widths"] and ladder["widths"][-1] <= 1200 and ladder["fallback"] == "jpg"
    for ext in ("avif", "webp", "jpg"):
        for width in ladder["widths"]:
            url = urljoin(server.url, ladder["template"].format(width=width, ext=ext))
            assert f"{url} {width}w" in snippet.replace("&amp;", "&")
    top = ladder["widths"][-1]
    assert f'width="{top}" height="{round(top * 800 / 1200)}"' in snippet
    assert 'alt="sunset over sea"' in snippet
    assert f'style="background-color: {status["placeholder"]["dominant_color"]}"' in snippet
    assert snippet.index('type="image/avif"') < snippet.index('type="image/webp"') < snippet.index("<img ")

    photo.get_by_role("button", name="Copy HTML").click()
    photo.get_by_role("status").filter(has_text="Copied").wait_for(timeout=5000)  # the copy is async
    assert uploaded.evaluate("navigator.clipboard.readText()") == snippet

    # Pasted into a page, the snippet shows the image: the browser picks a width URL, the API makes
    # that size on this first request and redirects to it.
    pasted = context.new_page()
    pasted.goto(server.url + "/static/style.css")
    pasted.set_content(f"<!doctype html><body style='margin:0'>{snippet}</body>")
    image = pasted.locator("img")
    image.evaluate("(img) => img.complete || new Promise((resolve) => { img.onload = img.onerror = resolve; })")
    loaded = image.evaluate("(img) => ({w: img.naturalWidth, src: img.currentSrc})")
    pasted.close()
    assert loaded["w"] in ladder["widths"], loaded
    assert "/w" in loaded["src"] and loaded["src"].split("?")[0].endswith(".avif"), loaded  # Chromium takes AVIF


def test_rejected_uploads_say_why_in_words(uploaded):
    text = card(uploaded, TEXT_NAME)
    assert text.get_by_role("status").first.text_content().startswith("Rejected: not an image")
    assert text.get_attribute("data-error") == "unsupported_type"
    huge = card(uploaded, HUGE_NAME)
    assert huge.get_by_role("status").first.text_content() == "Rejected: too large"
    assert huge.get_attribute("data-error") == "too_large"
    expect(uploaded.locator("#summary")).to_have_text("4 uploads: 2 ready, 2 rejected")


def test_upload_progress_is_reported(uploaded):
    seen = uploaded.evaluate("window.progressSeen")
    assert "100% uploaded" in seen, seen


def test_gallery_lists_both_images_newest_first_with_the_same_facts(uploaded, context, server):
    ids = {name: card(uploaded, name).get_attribute("data-image-id") for name in (PHOTO_NAME, SECOND_NAME)}
    page = context.new_page()
    page.goto(server.url + "/gallery")
    for name in ids:
        page.locator(f".card{PROCESSED}", has=page.get_by_role("heading", name=name, exact=True)).wait_for(
            timeout=20000
        )
    listed = page.locator(".card").evaluate_all("(cards) => cards.map((c) => c.dataset.imageId)")
    ours = [i for i in listed if i in ids.values()]
    assert ours == sorted(ids.values()), "newest first (ids sort newest first)"
    assert TEXT_NAME not in page.locator(".card-name").all_text_contents()
    assert page.get_by_role("button", name="Show more").is_hidden(), "everything fits one page"
    clipped = page.locator(".facts-wrap").evaluate_all(
        "(all) => all.filter((t) => t.scrollWidth > t.clientWidth).length"
    )
    assert clipped == 0, "a facts table is wider than its card"
    rows = card(page, SECOND_NAME).locator("table.facts tbody tr")
    assert rows.count() >= 2
    assert card(page, SECOND_NAME).locator("table.facts caption").text_content().startswith("Original: 900×600")
    shot = Image.open(io.BytesIO(card(page, SECOND_NAME).locator(".frame").screenshot()))
    w, h = shot.size
    assert near(mean(shot.crop((0, h // 10, w, h * 4 // 10))), TEAL)
    page.close()


def test_gallery_pages_with_show_more_and_moves_focus_to_the_new_card(uploaded, context, server):
    page = context.new_page()
    page.goto(server.url + "/gallery?limit=1")
    page.locator(f".card{PROCESSED}").first.wait_for(timeout=20000)
    assert page.locator(".card").count() == 1
    more = page.get_by_role("button", name="Show more")
    more.focus()
    page.keyboard.press("Enter")
    page.locator(".card").nth(1).wait_for(timeout=20000)
    assert page.locator(".card").count() == 2
    assert page.evaluate("document.activeElement === document.querySelectorAll('.card')[1]")
    expect(page.locator("#summary")).to_have_text(re.compile("^2 images shown"))
    page.close()


def test_a_dropped_file_is_uploaded_like_a_picked_one(context, server):
    page = context.new_page()
    page.goto(server.url + "/")
    page.evaluate(
        """async (bytes) => {
            const file = new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" });
            const data = new DataTransfer();
            data.items.add(file);
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.getElementById("drop")
                    .dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
            }
        }""",
        list(encode(two_tone(300, 200, TEAL, ORANGE), "PNG")),
    )
    page.locator(f".card{PROCESSED}", has=page.get_by_role("heading", name="dropped.png")).wait_for(timeout=30000)
    assert not page.locator("#drop").evaluate("(zone) => zone.classList.contains('dragging')")
    page.close()


def test_phone_width_has_no_sideways_scrolling(browser, server, uploaded, tmp_path):
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    page = phone.new_page()
    for path in ("/", "/gallery"):
        page.goto(server.url + path)
        if path == "/gallery":
            page.locator(f".card{PROCESSED}").first.wait_for(timeout=20000)
        else:
            page.set_input_files("#files", [{"name": "phone.jpg", "mimeType": "image/jpeg", "buffer": PHOTO}])
            page.locator(f".card{PROCESSED}").first.wait_for(timeout=30000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, f"{path} scrolls sideways"
        assert (
            page.locator(".facts-wrap").evaluate_all("(all) => all.filter((t) => t.scrollWidth > t.clientWidth).length")
            == 0
        ), f"{path}: a table is clipped"
        shot = page.screenshot(path=tmp_path / f"phone{path.replace('/', '-')}.png", full_page=True)
        if SCREENSHOTS and path == "/":
            Image.open(io.BytesIO(shot)).convert("RGB").save(Path(SCREENSHOTS) / "page-phone.webp", "WEBP", quality=80)
    phone.close()


def test_keyboard_reaches_the_file_picker_with_a_visible_focus(context, server):
    page = context.new_page()
    page.goto(server.url + "/")
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "files":
            break
    else:
        raise AssertionError("Tab never reached the file picker")
    outline = page.locator("label[for=files]").evaluate("(label) => getComputedStyle(label).outlineStyle")
    assert outline != "none", "the focused picker shows no focus ring"
    assert page.get_by_label("Choose images").count() == 1
    page.close()


def test_readme_screenshot(uploaded):
    """The README's picture of the page, from this same run (written only when asked)."""
    card(uploaded, PHOTO_NAME).locator("summary").click()  # the snippet open, as a reader would look at it
    uploaded.evaluate("window.scrollTo(0, 0)")
    uploaded.set_viewport_size({"width": 1280, "height": 1160})
    shot = Image.open(io.BytesIO(uploaded.screenshot(full_page=False)))
    assert shot.size == (1280, 1160)
    if SCREENSHOTS:
        out = Path(SCREENSHOTS) / "page.webp"
        shot.convert("RGB").save(out, "WEBP", quality=80, method=6)
        assert out.stat().st_size < 200_000


def test_filesystem_backend_upload_and_gallery(browser, tmp_path_factory):
    """`serve --storage DIR`: the same page, the form posted back to the API, processed in-process."""
    directory = tmp_path_factory.mktemp("images")
    server = start_server(tmp_path_factory, "--storage", str(directory))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url + "/")
        page.set_input_files(
            "#files",
            [
                {"name": PHOTO_NAME, "mimeType": "image/jpeg", "buffer": PHOTO},
                {"name": TEXT_NAME, "mimeType": "image/jpeg", "buffer": b"just text\n"},
            ],
        )
        page.locator(f".card{PROCESSED}").wait_for(timeout=30000)
        assert card(page, TEXT_NAME).get_by_role("status").first.text_content().startswith("Rejected: not an image")
        shot = Image.open(io.BytesIO(card(page, PHOTO_NAME).locator(".frame").screenshot()))
        w, h = shot.size
        assert near(mean(shot.crop((0, h // 10, w, h * 4 // 10))), ORANGE)
        image_id = card(page, PHOTO_NAME).get_attribute("data-image-id")
        assert list(directory.glob(f"processed/{image_id}/*/manifest.json")), "outputs are files in DIR"

        page.goto(server.url + "/gallery")
        page.locator(f".card{PROCESSED}").wait_for(timeout=20000)
        assert page.locator(".card").evaluate_all("(cards) => cards.map((c) => c.dataset.imageId)") == [image_id]
        page.close()
    finally:
        server.stop()


def test_the_page_with_a_token_in_front_of_an_api_with_owners(browser, tmp_path_factory, tmp_path):
    """`serve --jwt-secret`: the page sends the bearer token it was given (`?token=`, or the field),
    keeps it for the tab only, and says clearly when a token is needed."""
    from image_pipeline.api.auth import make_token

    secret = "a-browser-test-secret-of-32-bytes-or-more"
    server = start_server(tmp_path_factory, "--storage", str(tmp_path_factory.mktemp("owned")), "--jwt-secret", secret)
    alice, bob = make_token(secret, "alice"), make_token(secret, "bob")
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(f"{server.url}/?token={alice}")
        assert "token" not in page.url, "the token is taken out of the address bar"
        assert page.evaluate("sessionStorage.getItem('image-pipeline-token')") == alice
        page.set_input_files("#files", [{"name": PHOTO_NAME, "mimeType": "image/jpeg", "buffer": PHOTO}])
        page.locator(f".card{PROCESSED}").wait_for(timeout=30000)
        image_id = card(page, PHOTO_NAME).get_attribute("data-image-id")
        assert image_id.split("-")[0] == owner_tag("alice")
        page.goto(server.url + "/gallery")  # the same tab: the token is still there, not in the address
        page.locator(f".card{PROCESSED}").wait_for(timeout=20000)
        assert page.locator(".card").evaluate_all("(cards) => cards.map((c) => c.dataset.imageId)") == [image_id]
        context.close()

        # A new tab without a token: told what to do; given Bob's token, Bob's (empty) gallery.
        for width, height in ((1280, 900), (390, 844)):
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.goto(server.url + "/gallery")
            expect(page.get_by_role("alert")).to_contain_text("needs an access token")
            expect(page.locator("#summary")).to_contain_text("access token is needed")
            assert page.evaluate("document.documentElement.scrollWidth") <= width, "the token form scrolls sideways"
            page.screenshot(path=tmp_path / f"token-{width}.png", full_page=True)
            page.get_by_role("textbox", name="Access token").fill(bob)
            page.get_by_role("button", name="Use token").click()
            expect(page.locator("#summary")).to_have_text("Nothing processed yet: upload some images first.")
            assert page.get_by_role("button", name="Forget token").is_visible()
            context.close()

        # Uploading without a token: the card says a token is needed, nothing is stored.
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(server.url + "/")
        assert page.locator("#access").is_hidden(), "no token field until the API asks for one"
        page.set_input_files("#files", [{"name": "anon.jpg", "mimeType": "image/jpeg", "buffer": PHOTO}])
        expect(card(page, "anon.jpg").get_by_role("status").first).to_have_text(re.compile("^Sign-in needed"))
        assert page.locator("#access").is_visible()
        context.close()
    finally:
        server.stop()
