"""Tiny previews for the manifest: a BlurHash, a ThumbHash and a dominant colour.

All are computed from an already-small image (≤ 64 px, the whole frame), so they cost a few
milliseconds. BlurHash is the public algorithm from https://blurha.sh (4×3 components by default);
ThumbHash (https://evanw.github.io/thumbhash/) is smaller, keeps the aspect ratio and alpha, and
is given base64-encoded as its decoders expect; `thumbhash()` reproduces the reference encoder
bit for bit (tests/unit/test_placeholder.py holds vectors made with the reference JS package).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import cast

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
    rgb = cast(Iterable[tuple[int, int, int]], small.get_flattened_data())  # an RGB image: (r, g, b) a pixel
    pixels = [(_TO_LINEAR[r], _TO_LINEAR[g], _TO_LINEAR[b]) for r, g, b in rgb]
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
    colors, palette = quantised.getcolors(), quantised.getpalette()
    assert colors is not None and palette is not None  # a "P" image of at most 8 colours
    _count, index = max(cast(list[tuple[int, int]], colors))  # (count, palette index)
    return "#{:02x}{:02x}{:02x}".format(*palette[index * 3 : index * 3 + 3])


def thumbhash(image: Image.Image, max_side: int = 32) -> str:
    """The ThumbHash of `image` (any mode), base64. It is first shrunk to fit `max_side` (≤ 100,
    the format's limit): the hash keeps ≤ 7×7 components and its decoders render 32 px, so a
    32 px input gives the same picture at a tenth of the cost of 100 px (pure Python: ~10 ms)."""
    small = image.convert("RGBA")
    side = min(max_side, 100)
    if max(small.size) > side:
        small.thumbnail((side, side), Image.Resampling.BOX)
    width, height = small.size
    return base64.b64encode(bytes(rgba_to_thumbhash(width, height, small.tobytes()))).decode("ascii")


def rgba_to_thumbhash(w: int, h: int, rgba: bytes) -> list[int]:
    """ThumbHash of w×h RGBA pixels (not premultiplied), as in the reference implementation."""
    if not (0 < w <= 100 and 0 < h <= 100) or len(rgba) != w * h * 4:
        raise ValueError(f"{w}×{h} RGBA with {len(rgba)} bytes does not fit ThumbHash's ≤ 100×100")
    # Same operations in the same order as the reference, so the float rounding matches too.
    n = w * h
    avg_r = avg_g = avg_b = avg_a = 0.0
    for j in range(0, n * 4, 4):
        alpha = rgba[j + 3] / 255
        avg_r += alpha / 255 * rgba[j]
        avg_g += alpha / 255 * rgba[j + 1]
        avg_b += alpha / 255 * rgba[j + 2]
        avg_a += alpha
    if avg_a:
        avg_r, avg_g, avg_b = avg_r / avg_a, avg_g / avg_a, avg_b / avg_a
    has_alpha = avg_a < n
    l_limit = 5 if has_alpha else 7  # fewer luminance bits when there is alpha
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    lum, yb, rg, alpha_channel = [], [], [], []
    for j in range(0, n * 4, 4):  # composite atop the average colour, then to LPQA
        alpha = rgba[j + 3] / 255
        r = avg_r * (1 - alpha) + alpha / 255 * rgba[j]
        g = avg_g * (1 - alpha) + alpha / 255 * rgba[j + 1]
        b = avg_b * (1 - alpha) + alpha / 255 * rgba[j + 2]
        lum.append((r + g + b) / 3)
        yb.append((r + g) / 2 - b)
        rg.append(r - g)
        alpha_channel.append(alpha)

    def encode_channel(channel: list[float], nx: int, ny: int) -> tuple[float, list[float], float]:
        dc, ac, scale = 0.0, [], 0.0
        for cy in range(ny):
            cx = 0
            while cx * ny < nx * (ny - cy):
                fx = [math.cos(math.pi / w * cx * (x + 0.5)) for x in range(w)]
                f = 0.0
                for y in range(h):
                    fy = math.cos(math.pi / h * cy * (y + 0.5))
                    for x in range(w):
                        f += channel[x + y * w] * fx[x] * fy
                f /= w * h
                if cx > 0 or cy > 0:
                    ac.append(f)
                    scale = max(scale, abs(f))
                else:
                    dc = f
                cx += 1
        if scale > 0:
            ac = [0.5 + 0.5 / scale * f for f in ac]
        return dc, ac, scale

    l_dc, l_ac, l_scale = encode_channel(lum, max(lx, 3), max(ly, 3))
    p_dc, p_ac, p_scale = encode_channel(yb, 3, 3)
    q_dc, q_ac, q_scale = encode_channel(rg, 3, 3)
    a_dc, a_ac, a_scale = encode_channel(alpha_channel, 5, 5) if has_alpha else (1.0, [], 1.0)
    landscape = w > h
    header24 = (
        _round(63 * l_dc)
        | _round(31.5 + 31.5 * p_dc) << 6
        | _round(31.5 + 31.5 * q_dc) << 12
        | _round(31 * l_scale) << 18
        | (1 << 23 if has_alpha else 0)
    )
    header16 = (
        (ly if landscape else lx)
        | _round(63 * p_scale) << 3
        | _round(63 * q_scale) << 9
        | (1 << 15 if landscape else 0)
    )
    out = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    if has_alpha:
        out.append(_round(15 * a_dc) | _round(15 * a_scale) << 4)
    odd = False
    for f in [*l_ac, *p_ac, *q_ac, *a_ac]:
        u = _round(15 * f)
        if odd:
            out[-1] |= u << 4
        else:
            out.append(u)
        odd = not odd
    return out


def _round(value: float) -> int:
    """JavaScript's Math.round (halves go up), which the reference encoder uses."""
    return math.floor(value + 0.5)
