"""DELIVERY=private on the page: the <picture> snippet (static/cards.js, run in Chromium) built
from signed links keeps every one of them valid, named variants (canned policies) and the
width-URL ladder filled in from a template signed once (a custom policy), as CloudFront would
check them (tests/cloudfront.py)."""

from __future__ import annotations

import html
import re

from image_pipeline.api.delivery import LinkSigner, load_private_key
from tests.cloudfront import key_pair, viewer_may_read

CDN = "https://d111111abcdef8.cloudfront.net/"
KEY_ID = "K2JCJMDEHXQW5F"


def _snippet(page, image, alt="holiday"):
    return page.evaluate(
        """async ([image, alt]) => (await import("/static/cards.js")).pictureSnippet(image, alt)""", [image, alt]
    )


def _urls(snippet: str) -> list[str]:
    found = []
    for attribute in re.findall(r'(?:src|srcset)="([^"]*)"', snippet):
        for candidate in html.unescape(attribute).split(", "):
            found.append(candidate.split(" ")[0])
    return found


def test_the_snippet_carries_signed_urls_cloudfront_accepts(static_page):
    private, public = key_pair()
    signer = LinkSigner(CDN, KEY_ID, load_private_key(private, "CLOUDFRONT_PRIVATE_KEY"), 900)
    prefix = f"{CDN}processed/abc/holiday/"
    variants = [
        {
            "name": "medium",
            "width": 800,
            "height": 534,
            "bytes": 5664,
            "content_type": "image/webp",
            "leaf": "medium.webp",
        },
        {
            "name": "large",
            "width": 1600,
            "height": 1067,
            "bytes": 71762,
            "content_type": "image/jpeg",
            "leaf": "large.jpg",
        },
    ]
    image = {
        "id": "abc",
        "status": "processed",
        "source": {"bytes": 92493, "type": "jpeg", "width": 1600, "height": 1067},
        "placeholder": {"dominant_color": "#4f7da6"},
        "variants": [
            {**v, "url": signer.sign(prefix + v["leaf"]), "src": signer.sign(prefix + v["leaf"])} for v in variants
        ],
    }
    named = _urls(_snippet(static_page, image))
    assert len(named) == 4 and all(u.startswith(prefix) and "Signature=" in u for u in named)
    assert [viewer_may_read(u, public, KEY_ID) for u in named] == [None] * 4

    ladder = {
        **image,
        "width_urls": {
            "template": signer.sign_template(prefix + "w{width}.{ext}"),
            "widths": [640, 1080, 1600],
            "fallback": "jpg",
        },
    }
    widths = _urls(_snippet(static_page, ladder))
    assert len(widths) == 10  # avif ×3, webp ×3, the fallback's src and ×3
    assert {u.split("?")[0].rsplit("/", 1)[1] for u in widths} >= {"w640.avif", "w1080.webp", "w1600.jpg"}
    assert [viewer_may_read(u, public, KEY_ID) for u in widths] == [None] * 10
