"""The <picture> snippet for a ratio, run in Chromium: that ratio's srcset ladder (AVIF, WebP and
the fallback), every allowlisted width up to the ratio's window, the window's shape."""

from __future__ import annotations

IMAGE = {
    "id": "abc",
    "status": "processed",
    "source": {"bytes": 92493, "type": "jpeg", "width": 1200, "height": 800},
    "placeholder": {"dominant_color": "#4f7da6"},
    "variants": [
        {
            "name": "large",
            "url": "/images/abc/large",
            "width": 1200,
            "height": 800,
            "bytes": 9,
            "content_type": "image/jpeg",
        }
    ],
    "width_urls": {"template": "/images/abc/w{width}.{ext}", "widths": [256, 640, 1080], "fallback": "jpg"},
    "ratio_urls": {
        "template": "/images/abc/w{width}-{ratio}.{ext}",
        "ratios": ["1x1", "9x16", "16x9"],
        "widths": [256, 640, 1080],
        "fallback": "jpg",
        "windows": {"1x1": [800, 800], "9x16": [450, 800], "16x9": [1200, 675]},
    },
}


def _snippet(page, ratio):
    return page.evaluate(
        """async ([image, ratio]) => (await import("/static/cards.js")).pictureSnippet(image, "cat", ratio)""",
        [IMAGE, ratio],
    )


def test_a_ratio_snippet_offers_that_ratios_ladder_up_to_its_window(static_page):
    lines = _snippet(static_page, "16x9").splitlines()
    assert lines[1] == (
        '  <source type="image/avif" srcset="http://static.test/images/abc/w256-16x9.avif 256w, '
        'http://static.test/images/abc/w640-16x9.avif 640w, http://static.test/images/abc/w1080-16x9.avif 1080w" '
        'sizes="(max-width: 1080px) 100vw, 1080px">'
    )
    assert "w640-16x9.webp 640w" in lines[2]
    assert 'src="http://static.test/images/abc/w1080-16x9.jpg"' in lines[3]
    assert 'width="1080" height="608"' in lines[3]


def test_a_narrow_window_stops_the_ladder_at_its_own_width(static_page):
    snippet = _snippet(static_page, "9x16")
    assert "w256-9x16.avif 256w" in snippet and "w640" not in snippet  # the 9:16 window is 450 wide
    assert 'width="256" height="455"' in snippet


def test_without_a_ratio_the_snippet_is_the_width_ladder(static_page):
    snippet = _snippet(static_page, "")
    assert "w1080.avif 1080w" in snippet and "-16x9" not in snippet
    assert _snippet(static_page, "5x4") is None  # a ratio the API does not offer
