"""The review page in a real headless Chromium, against `image-pipeline serve` with the content
check on and a threshold that flags everything: uploads are held on the upload page, the review page
shows them (preview, scores, Approve / Reject), and each decision does what it says."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import pytest
from PIL import Image, ImageStat

from tests.browser.conftest import start_server
from tests.images import encode

ORANGE = (232, 120, 32)


def orange_photo() -> bytes:
    return encode(Image.new("RGB", (600, 400), ORANGE), "JPEG", quality=92)


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    server = start_server(tmp_path_factory, MODERATION="local", MODERATION_THRESHOLD="0")
    yield server
    server.stop()


def card(page, name: str):
    return page.get_by_role("listitem", name=name, exact=True)


def test_held_uploads_are_reviewed_on_the_review_page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    names = ["keep-me.jpg", "drop-me.jpg"]
    page.set_input_files("#files", [{"name": n, "mimeType": "image/jpeg", "buffer": orange_photo()} for n in names])
    for name in names:
        held = page.locator('.card[data-state="held"]', has=page.get_by_role("heading", name=name, exact=True))
        held.wait_for(timeout=60000)
        assert "Held for review" in held.locator(".status").inner_text()

    page.goto(server.url + "/review")
    page.locator('.card[data-state="held"]').nth(1).wait_for(timeout=30000)
    assert page.locator(".summary").inner_text() == "2 held images"
    keep, drop = card(page, "keep-me.jpg"), card(page, "drop-me.jpg")
    assert "nsfw" in keep.locator(".scores").inner_text() and "(flagged)" in keep.locator(".scores").inner_text()
    preview = keep.get_by_role("img", name="Held upload keep-me.jpg")
    preview.evaluate("(img) => img.decode()")  # the short-lived preview link loads: the upload itself
    shot = Image.open(io.BytesIO(preview.screenshot())).convert("RGB")
    assert all(abs(a - b) < 30 for a, b in zip(ImageStat.Stat(shot).mean, ORANGE, strict=True))

    keep.get_by_role("button", name="Approve").click()
    page.wait_for_function(f"document.getElementById('{keep.get_attribute('id')}').dataset.state === 'processed'")
    assert keep.locator(".status").inner_text() == "Approved: published"
    drop.get_by_role("button", name="Reject").click()
    page.wait_for_function(f"document.getElementById('{drop.get_attribute('id')}').dataset.state === 'rejected'")
    assert drop.locator(".status").inner_text() == "Rejected: the upload is deleted"

    kept_id, dropped_id = keep.get_attribute("data-image-id"), drop.get_attribute("data-image-id")
    with urllib.request.urlopen(f"{server.url}/images/{kept_id}") as response:
        assert json.load(response)["status"] == "processed"
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(f"{server.url}/images/{dropped_id}")
    assert gone.value.code == 404

    page.reload()
    page.wait_for_function(
        "document.getElementById('summary').textContent.length > 0 && "
        "!document.getElementById('summary').textContent.startsWith('Loading')"
    )
    assert page.locator(".summary").inner_text() == "Nothing is waiting for review."
    assert not errors, errors
    context.close()
