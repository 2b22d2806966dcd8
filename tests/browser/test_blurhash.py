"""The page's BlurHash decoder (static/blurhash.js, run in Chromium) against the pipeline's encoder."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from image_pipeline.processor.placeholder import blurhash


def _reference_decode(hash_: str, width: int, height: int) -> list[tuple[int, int, int]]:
    """The published algorithm written out once more in Python, to compare the JS against."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"

    def b83(text: str) -> int:
        value = 0
        for char in text:
            value = value * 83 + digits.index(char)
        return value

    def linear(v: int) -> float:
        v /= 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    def srgb(v: float) -> int:
        v = min(max(v, 0.0), 1.0)
        return math.floor((v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055) * 255 + 0.5)

    size = b83(hash_[0])
    nx, ny = size % 9 + 1, size // 9 + 1
    max_value = (b83(hash_[1]) + 1) / 166
    dc = b83(hash_[2:6])
    colours = [(linear(dc >> 16), linear((dc >> 8) & 255), linear(dc & 255))]
    for i in range(1, nx * ny):
        ac = b83(hash_[4 + 2 * i : 6 + 2 * i])
        colours.append(
            tuple(math.copysign(((q - 9) / 9) ** 2, q - 9) * max_value for q in (ac // 361, ac // 19 % 19, ac % 19))
        )
    out = []
    for y in range(height):
        for x in range(width):
            r = g = b = 0.0
            for j in range(ny):
                for i in range(nx):
                    basis = math.cos(math.pi * x * i / width) * math.cos(math.pi * y * j / height)
                    c = colours[i + j * nx]
                    r, g, b = r + c[0] * basis, g + c[1] * basis, b + c[2] * basis
            out.append((srgb(r), srgb(g), srgb(b)))
    return out


def _js_decode(page, hash_: str, width: int, height: int) -> list[tuple[int, int, int]]:
    flat = page.evaluate(
        """async ([hash, w, h]) => {
            const { decode } = await import("/static/blurhash.js");
            return Array.from(decode(hash, w, h));
        }""",
        [hash_, width, height],
    )
    assert len(flat) == width * height * 4
    assert set(flat[3::4]) == {255}
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 4)]


def _halves(width: int, height: int) -> Image.Image:
    """Red on the left, blue on the right: a BlurHash must keep which side is which."""
    image = Image.new("RGB", (width, height), (220, 40, 30))
    image.paste((30, 60, 200), (width // 2, 0, width, height))
    return image


@pytest.mark.parametrize("components", [(4, 3), (1, 1), (9, 9)])
def test_js_decoder_matches_the_algorithm_on_the_encoders_hashes(static_page, components):
    hash_ = blurhash(_halves(120, 80), *components)
    js = _js_decode(static_page, hash_, 24, 16)
    reference = _reference_decode(hash_, 24, 16)
    worst = max(abs(a - b) for p, q in zip(js, reference, strict=True) for a, b in zip(p, q, strict=True))
    assert worst <= 1, f"JS decode of {hash_} differs by up to {worst} from the algorithm"


def test_decoded_placeholder_looks_like_the_image(static_page):
    hash_ = blurhash(_halves(120, 80))
    pixels = _js_decode(static_page, hash_, 30, 20)
    left = [p for i, p in enumerate(pixels) if i % 30 < 8]
    right = [p for i, p in enumerate(pixels) if i % 30 >= 22]
    mean = lambda ps, c: sum(p[c] for p in ps) / len(ps)  # noqa: E731
    assert mean(left, 0) > mean(left, 2) + 80, "the left of the placeholder is red"
    assert mean(right, 2) > mean(right, 0) + 80, "the right of the placeholder is blue"


def test_decoder_rejects_malformed_hashes(static_page):
    verdicts = static_page.evaluate(
        """async (hashes) => {
            const { isBlurhash } = await import("/static/blurhash.js");
            return hashes.map(isBlurhash);
        }""",
        ["", "LEHV6nWB2yk8pyo0adR*.7kCMdnj", "LEHV6nWB2yk8pyo0adR*.7kCMdn", "LEHV6nWB2yk8pyo0adR*.7kCMd j", None],
    )
    assert verdicts == [False, True, False, False, False]


@pytest.mark.parametrize("size", [(32, 21), (21, 32), (7, 5)])
def test_js_encoder_gives_the_pipelines_hash_for_the_same_pixels(static_page, size):
    """The page paints a picked file's own BlurHash while it is processed: the same algorithm."""
    image = _halves(*size)
    image.paste((250, 230, 40), (0, 0, size[0] // 3, size[1] // 3))
    pixels = [v for rgb in image.get_flattened_data() for v in (*rgb, 255)]
    js = static_page.evaluate(
        """async ([pixels, w, h]) =>
            (await import("/static/blurhash.js")).encode(Uint8ClampedArray.from(pixels), w, h)""",
        [pixels, *size],
    )
    assert js == blurhash(image)  # ≤ 32 px a side: the Python encoder does not resize it
