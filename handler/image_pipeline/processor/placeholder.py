"""Tiny previews for the manifest: a BlurHash string and a dominant colour.

Both are computed from an already-small image (≤ 32 px), so they cost a few milliseconds.
BlurHash is the public algorithm from https://blurha.sh (4×3 components by default).
"""

from __future__ import annotations

import math

from PIL import Image

_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_TO_LINEAR = [((v / 255 + 0.055) / 1.055) ** 2.4 if v / 255 > 0.04045 else v / 255 / 12.92 for v in range(256)]


def _base83(value: int, length: int) -> str:
    return "".join(_B83[(value // 83 ** (length - i - 1)) % 83] for i in range(length))


def _to_srgb(value: float) -> int:
    v = min(max(value, 0.0), 1.0)
    return round(v * 12.92 * 255) if v <= 0.0031308 else round((1.055 * v ** (1 / 2.4) - 0.055) * 255)


def _sign_pow(value: float, exp: float) -> float:
    return math.copysign(abs(value) ** exp, value)


def blurhash(image: Image.Image, x_components: int = 4, y_components: int = 3) -> str:
    """Encode `image` (any mode) as a BlurHash; it is first shrunk to at most 32×32."""
    small = image.convert("RGB")
    small.thumbnail((32, 32), Image.Resampling.BILINEAR)
    width, height = small.size
    pixels = [(_TO_LINEAR[r], _TO_LINEAR[g], _TO_LINEAR[b]) for r, g, b in small.get_flattened_data()]
    cos_x = [[math.cos(math.pi * i * x / width) for x in range(width)] for i in range(x_components)]
    cos_y = [[math.cos(math.pi * j * y / height) for y in range(height)] for j in range(y_components)]
    factors = []
    for j in range(y_components):
        for i in range(x_components):
            norm = (1 if i == 0 and j == 0 else 2) / (width * height)
            r = g = b = 0.0
            for y in range(height):
                cy = cos_y[j][y] * norm
                row = pixels[y * width : (y + 1) * width]
                for x, (pr, pg, pb) in enumerate(row):
                    basis = cos_x[i][x] * cy
                    r += basis * pr
                    g += basis * pg
                    b += basis * pb
            factors.append((r, g, b))
    dc, ac = factors[0], factors[1:]
    out = _base83((x_components - 1) + (y_components - 1) * 9, 1)
    if ac:
        quantised_max = max(0, min(82, math.floor(max(abs(v) for f in ac for v in f) * 166 - 0.5)))
        max_value = (quantised_max + 1) / 166
        out += _base83(quantised_max, 1)
    else:
        max_value = 1.0
        out += _base83(0, 1)
    out += _base83((_to_srgb(dc[0]) << 16) + (_to_srgb(dc[1]) << 8) + _to_srgb(dc[2]), 4)
    for r, g, b in ac:
        q = [max(0, min(18, math.floor(_sign_pow(v / max_value, 0.5) * 9 + 9.5))) for v in (r, g, b)]
        out += _base83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2)
    return out


def dominant_color(image: Image.Image) -> str:
    """The most common colour after quantising to 8 colours, as `#rrggbb`."""
    small = image.convert("RGB")
    small.thumbnail((64, 64), Image.Resampling.BILINEAR)
    quantised = small.quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    count, index = max(quantised.getcolors())
    palette = quantised.getpalette()[index * 3 : index * 3 + 3]
    return "#{:02x}{:02x}{:02x}".format(*palette)
