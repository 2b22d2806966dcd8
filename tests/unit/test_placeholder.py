"""ThumbHash against the reference implementation (vectors made with the `thumbhash` npm package
0.1.1, evanw/thumbhash's own JS encoder, on the pixel formulas below). Patterns whose AC terms
are exactly zero in theory are left out: there the sign of a 1e-17 residue, which depends on the
libm's cos, decides a rounding, in any two implementations alike."""

from __future__ import annotations

import base64

import pytest
from PIL import Image

from image_pipeline import ImageProcessor
from image_pipeline.processor.placeholder import rgba_to_thumbhash, thumbhash
from tests.images import encode

VECTORS = [
    (
        4,
        3,
        lambda x, y: ((x * 60 + y * 20) % 256, (x * 7 + y * 90) % 256, (x * y * 30 + 40) % 256, 255),
        "mBgSHZRxd3iQiHiHiIiHh3YEB/eI",
    ),
    (
        30,
        20,
        lambda x, y: ((x * x * 3 + y * 11) % 256, (y * y * 5 + x) % 256, (x * y * 7) % 256, 255),
        "3ScGFYxmVWZhZnZQh2iGgv6Hc6b1",
    ),
    (
        20,
        32,
        lambda x, y: (200, (y * 8) % 256, (x * 12) % 256, (x * 13 + y * 7) % 256),
        "pJmGMwwXoaCXeIifc2b2d2lmN5AofIc=",
    ),
    (
        100,
        75,
        lambda x, y: (((x ^ y) * 5) % 256, (x * y) % 256, (255 - x * 2) % 256, 255),
        "4PYFXYR/d3dXhoh3R3eHh3B3p/7S",
    ),
    (
        64,
        64,
        lambda x, y: (255 if x < 32 else 0, 0, 255 if y < 32 else 0, 255 if (x + y) % 3 else 0),
        "FfaKbRoKj3WPh3dYeItw94h4CAinqICACg==",
    ),
]


@pytest.mark.parametrize("w, h, pixel, expected", VECTORS, ids=[f"{v[0]}x{v[1]}" for v in VECTORS])
def test_thumbhash_matches_the_reference_encoder(w, h, pixel, expected):
    rgba = bytes(c for y in range(h) for x in range(w) for c in pixel(x, y))
    assert base64.b64encode(bytes(rgba_to_thumbhash(w, h, rgba))).decode() == expected


def test_thumbhash_refuses_what_the_reference_refuses():
    with pytest.raises(ValueError):
        rgba_to_thumbhash(101, 10, bytes(101 * 10 * 4))


def _aspect(hash_: str) -> float:
    """The reference decoder's approximate aspect ratio (thumbHashToApproximateAspectRatio)."""
    raw = base64.b64decode(hash_)
    has_alpha, landscape = bool(raw[2] & 0x80), bool(raw[4] & 0x80)
    l_max, l_min = (5 if has_alpha else 7), raw[3] & 7
    return (l_max / l_min) if landscape else (l_min / l_max)


def test_the_manifest_thumbhash_keeps_aspect_ratio_and_alpha():
    wide = ImageProcessor().process_image(encode(Image.new("RGB", (900, 300), (30, 120, 200)), "PNG"))
    assert _aspect(wide.thumbhash) == pytest.approx(3.0, rel=0.25)
    assert not base64.b64decode(wide.thumbhash)[2] & 0x80  # no alpha
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    clear.paste((255, 0, 0, 255), (100, 100, 200, 200))
    holed = ImageProcessor().process_image(encode(clear, "PNG"))
    assert base64.b64decode(holed.thumbhash)[2] & 0x80  # alpha kept


def test_thumbhash_of_a_large_image_is_computed_on_a_small_copy():
    big = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    assert thumbhash(big) == thumbhash(big.resize((32, 24), Image.Resampling.BOX))


def test_the_manifest_records_placeholders_and_the_focal_point():
    from image_pipeline import manifest

    processed = ImageProcessor().process_image(encode(Image.new("RGB", (400, 300), (30, 120, 200)), "PNG"))
    record = manifest.build(
        bucket="b",
        key="raw/a.png",
        etag="e",
        processed=processed,
        variant_keys={v.name: f"processed/a/{v.name}" for v in processed.variants},
        total_ms=1.0,
        fingerprint="f",
    )
    assert record["placeholder"] == {
        "blurhash": processed.blurhash,
        "thumbhash": processed.thumbhash,
        "dominant_color": "#1e78c8",
    }
    assert base64.b64decode(record["placeholder"]["thumbhash"])
    assert record["focal_point"] == {"x": 0.5, "y": 0.5}  # a flat picture has no subject
