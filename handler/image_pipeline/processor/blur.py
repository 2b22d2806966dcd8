"""Strongly blurred variants, for an image a check on the picture flagged (MODERATION_ACTION=blur).

Each encoded variant is decoded again (they are small: the variants, not the upload), blurred with
a Gaussian whose radius is a tenth of its longer side (shapes and colours stay, nothing can be made
out), and encoded in its own format at its own size. An animation keeps only its first frame. A
preserved original (no web format) is replaced by a blurred JPEG-less copy of the largest variant's
format is not attempted: it is dropped, since it would publish the upload itself.
"""

from __future__ import annotations

import io
from dataclasses import replace

from PIL import Image, ImageFilter

from .encode import encode, prepare
from .specs import ProcessedImage

BLUR_FRACTION = 0.1  # radius / longer side
QUALITY = 70


def blurred(processed: ProcessedImage, background: tuple[int, int, int] = (255, 255, 255)) -> ProcessedImage:
    variants = []
    for variant in processed.variants:
        if variant.format is None or variant.name == "original":
            continue
        with Image.open(io.BytesIO(variant.data)) as opened:
            opened.seek(0)
            picture = opened.convert("RGBA" if "A" in opened.mode or opened.mode == "P" else "RGB")
        radius = max(2.0, max(picture.size) * BLUR_FRACTION)
        soft = picture.filter(ImageFilter.GaussianBlur(radius))
        data = encode([prepare(soft, variant.format, background)], variant.format, QUALITY)
        variants.append(replace(variant, data=data, quality=QUALITY, qauto=None, gain_map=None))
    return replace(processed, variants=tuple(variants))


def rendition_of(data: bytes, longest: int) -> Image.Image:
    """An encoded image's first frame at ≤ `longest` px (longest side), RGB."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.seek(0)
        picture = opened.convert("RGB")
    picture.thumbnail((longest, longest))
    return picture
