"""The card's pure parts, run in Chromium: the <picture> snippet, error words, facts."""

from __future__ import annotations

import re
from pathlib import Path

from image_pipeline.errors import ERROR_CODES

ERROR_TABLE = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"  # "Error codes"

IMAGE = {
    "id": "abc",
    "status": "processed",
    "source": {"bytes": 92493, "type": "jpeg", "width": 1600, "height": 1067},
    "placeholder": {"blurhash": "Lc9uy[NfxVWssKR:s*R:VsWFoIWY", "dominant_color": "#4f7da6"},
    "variants": [
        {
            "name": "thumbnail",
            "url": "/images/abc/thumbnail",
            "width": 150,
            "height": 150,
            "bytes": 1170,
            "content_type": "image/webp",
        },
        {
            "name": "medium",
            "url": "/images/abc/medium",
            "width": 800,
            "height": 534,
            "bytes": 5664,
            "content_type": "image/webp",
        },
        {
            "name": "large",
            "url": "/images/abc/large",
            "width": 1600,
            "height": 1067,
            "bytes": 71762,
            "content_type": "image/jpeg",
        },
    ],
}


def _snippet(page, image, alt="holiday"):
    return page.evaluate(
        """async ([image, alt]) => (await import("/static/cards.js")).pictureSnippet(image, alt)""", [image, alt]
    )


def test_snippet_has_sources_by_format_width_descriptors_size_and_colour(static_page):
    assert _snippet(static_page, IMAGE).splitlines() == [
        "<picture>",
        '  <source type="image/webp" srcset="http://static.test/images/abc/medium 800w, '
        'http://static.test/images/abc/large 1600w" sizes="(max-width: 1600px) 100vw, 1600px">',
        '  <img src="http://static.test/images/abc/large" srcset="http://static.test/images/abc/large 1600w" '
        'sizes="(max-width: 1600px) 100vw, 1600px" width="1600" height="1067" alt="holiday" loading="lazy" '
        'decoding="async" style="background-color: #4f7da6">',
        "</picture>",
    ]


def test_snippet_prefers_avif_then_webp_per_width_and_escapes_attributes(static_page):
    image = {
        **IMAGE,
        "variants": [
            {
                "name": "s-avif",
                "url": "/i/s.avif?a=1&b=2",
                "width": 400,
                "height": 267,
                "bytes": 900,
                "content_type": "image/avif",
            },
            {
                "name": "s-webp",
                "url": "/i/s.webp",
                "width": 400,
                "height": 267,
                "bytes": 1200,
                "content_type": "image/webp",
            },
            {
                "name": "s-jpeg",
                "url": "/i/s.jpg",
                "width": 400,
                "height": 267,
                "bytes": 3000,
                "content_type": "image/jpeg",
            },
            {
                "name": "l-webp",
                "url": "/i/l.webp",
                "width": 1200,
                "height": 800,
                "bytes": 9000,
                "content_type": "image/webp",
            },
        ],
    }
    lines = _snippet(static_page, image, alt='say "cheese" & <smile>').splitlines()
    assert lines[1] == (
        '  <source type="image/avif" srcset="http://static.test/i/s.avif?a=1&amp;b=2 400w, '
        'http://static.test/i/l.webp 1200w" sizes="(max-width: 1200px) 100vw, 1200px">'
    )
    assert lines[2] == (
        '  <source type="image/webp" srcset="http://static.test/i/s.webp 400w, '
        'http://static.test/i/l.webp 1200w" sizes="(max-width: 1200px) 100vw, 1200px">'
    )
    assert 'srcset="http://static.test/i/s.jpg 400w"' in lines[3]
    assert 'width="1200" height="800"' in lines[3]
    assert 'alt="say &quot;cheese&quot; &amp; &lt;smile&gt;"' in lines[3]


def test_only_cropped_variants_give_one_image(static_page):
    image = {**IMAGE, "variants": IMAGE["variants"][:1]}
    assert _snippet(static_page, image) == (
        '<picture>\n  <img src="http://static.test/images/abc/thumbnail" '
        'srcset="http://static.test/images/abc/thumbnail 150w" sizes="(max-width: 150px) 100vw, 150px" '
        'width="150" height="150" alt="holiday" loading="lazy" decoding="async" '
        'style="background-color: #4f7da6">\n</picture>'
    )
    assert _snippet(static_page, {**IMAGE, "variants": []}) is None


def test_every_error_code_has_words(static_page):
    words = static_page.evaluate("""async () => (await import("/static/cards.js")).ERROR_WORDS""")
    table_codes = set(re.findall(r"^\| `([a-z_]+)` \|", ERROR_TABLE.read_text(encoding="utf-8"), re.M))
    assert table_codes, "the error table (docs/lifecycle.md) was not found"
    assert set(ERROR_CODES) | table_codes <= set(words), "an error code has no words on the page"
    assert words["unsupported_type"].startswith("not an image")
    assert words["too_large"] == "too large"


def test_alt_text_and_numbers(static_page):
    got = static_page.evaluate(
        """async () => {
            const c = await import("/static/cards.js");
            return [c.altFromName("IMG_2041-beach.jpg"), c.altFromName(".jpg"), c.formatBytes(71762),
                    c.formatBytes(5664), c.formatBytes(812), c.formatBytes(12345678),
                    c.saving(5664, 92493), c.saving(120000, 92493), c.saving(92400, 92493), c.saving(246, 199000),
                    c.saving(99, 100000)];
        }"""
    )
    assert got == [
        "IMG 2041 beach",
        "uploaded image",
        "72 kB",
        "5.7 kB",
        "812 B",
        "12.3 MB",
        "−94%",
        "+30%",
        "0%",
        "−99.9%",
        "−99.9%",
    ]


def test_with_width_urls_the_snippet_offers_the_whole_ladder_in_avif_webp_and_the_fallback(static_page):
    image = {
        **IMAGE,
        "width_urls": {"template": "/images/abc/w{width}.{ext}", "widths": [640, 1080, 1200, 1600], "fallback": "png"},
    }
    lines = _snippet(static_page, image).splitlines()

    def ladder(ext: str) -> str:
        return ", ".join(f"http://static.test/images/abc/w{w}.{ext} {w}w" for w in (640, 1080, 1200, 1600))

    sizes = 'sizes="(max-width: 1600px) 100vw, 1600px"'
    assert lines == [
        "<picture>",
        f'  <source type="image/avif" srcset="{ladder("avif")}" {sizes}>',
        f'  <source type="image/webp" srcset="{ladder("webp")}" {sizes}>',
        f'  <img src="http://static.test/images/abc/w1200.png" srcset="{ladder("png")}" {sizes} width="1600" '
        'height="1067" alt="holiday" loading="lazy" decoding="async" style="background-color: #4f7da6">',
        "</picture>",
    ]


def test_lazy_variants_are_shown_as_made_on_first_request(static_page):
    image = {
        **IMAGE,
        "lazy_variants": [{"name": "xl", "url": "/images/abc/xl", "made": False, "content_type": "image/jpeg"}],
    }
    rows = static_page.evaluate(
        """async (image) => {
            const { createCard } = await import("/static/cards.js");
            const card = createCard("holiday.jpg");
            document.body.append(card.node);
            card.processed(image);
            return [...card.node.querySelectorAll("table.facts tbody tr")]
                .map((tr) => tr.innerText.replace(/\\s+/g, " ").trim());
        }""",
        image,
    )
    assert rows[-1] == "xl made on first request"
