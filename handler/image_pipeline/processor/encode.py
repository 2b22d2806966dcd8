"""Per-format encoder settings, chosen for speed at equal quality (`bench/encoders.py`, 5 photos
fitted to 1920 px):

- JPEG: progressive — 4 % smaller than optimised baseline JPEG with identical pixels, ~14 ms more.
- WebP: method 4. Method 6 costs ~13× the time for ~4 % fewer bytes; method 2 halves the time
  but is 5 % larger at a lower SSIM, and with an alpha channel methods ≤ 3 are up to 1.5× larger.
- PNG: zlib level 6, no `optimize` (5× the time for 2 % fewer bytes).
- AVIF: speed 7. libavif's default 6 takes 1.66× as long for 3 % fewer bytes; speed 8 is faster
  still but 11 % larger and visibly worse (min SSIM 0.958 vs 0.984) at the same quality.
- GIF: Pillow's adaptive palette, transparency kept as one palette entry.
Metadata is written only when asked: no EXIF (GPS!), no XMP, no ICC unless it is kept."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from . import plugins
from .specs import ImageFormat


def flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite transparency onto `background` (for formats without alpha)."""
    if image.mode not in ("RGBA", "LA"):
        return image
    base = Image.new("RGB", image.size, background)
    base.paste(image.convert("RGBA"), mask=image.getchannel("A"))
    return base


def prepare(image: Image.Image, fmt: ImageFormat, background: tuple[int, int, int]) -> Image.Image:
    """Fit the image's mode to what the encoder supports."""
    if fmt is ImageFormat.JPEG:
        image = flatten(image, background)
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    if fmt in (ImageFormat.WEBP, ImageFormat.AVIF):
        if image.mode in ("RGB", "RGBA"):
            return image
        return image.convert("RGBA" if image.mode == "LA" else "RGB")
    if fmt is ImageFormat.GIF:
        return image if image.mode in ("RGB", "RGBA", "L", "P") else image.convert("RGB")
    return image  # PNG takes L, LA, RGB, RGBA


def _options(fmt: ImageFormat, quality: int) -> dict:
    if fmt is ImageFormat.JPEG:
        return {"quality": quality, "progressive": True, "optimize": False}
    if fmt is ImageFormat.WEBP:
        return {"quality": quality, "method": 4}
    if fmt is ImageFormat.AVIF:
        return {"quality": quality, "speed": 7}
    if fmt is ImageFormat.PNG:
        return {"compress_level": 6, "optimize": False}
    return {"optimize": False}


def encode(
    frames: Sequence[Image.Image],
    fmt: ImageFormat,
    quality: int,
    *,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    durations: Sequence[int] | None = None,
    loop: int | None = None,
) -> bytes:
    """Encode one image, or an animation when `frames` has several (GIF/WebP only).

    `loop` is the source's loop count; None (a GIF without one) plays once."""
    options = _options(fmt, quality)
    if fmt is not ImageFormat.GIF:
        # Explicit, so no plugin falls back to what it finds in `image.info` (ICC, EXIF, XMP).
        options.update(icc_profile=icc_profile or None, exif=exif or b"", xmp=b"")
    for frame in frames:
        frame.info = {}  # comments, text chunks, XMP… ride along in `info`; Pillow writes some back
    first = frames[0]
    if len(frames) > 1:
        options.update(save_all=True, append_images=list(frames[1:]))
        if loop is not None:
            options["loop"] = loop
        elif fmt is ImageFormat.WEBP:
            options["loop"] = 1  # WebP counts plays (0 = forever); a GIF without a count plays once
        if durations:
            options["duration"] = list(durations)
        if fmt is ImageFormat.GIF:
            options["disposal"] = 2
    plugins.load(fmt.pillow_name)
    buffer = io.BytesIO()
    first.save(buffer, format=fmt.pillow_name, **options)
    return buffer.getvalue()
