"""Bring any decoded image to 8-bit sRGB (or keep its ICC profile when asked).

Browsers assume untagged images are sRGB, so a Display-P3 or Adobe RGB photo whose profile is
stripped without converting looks dull, and CMYK looks wrong everywhere. We convert the pixels
with LittleCMS and then drop the profile, so outputs are small, untagged and correct.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import cast

from PIL import Image, ImageCms

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


@lru_cache(maxsize=1)
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=16)
def _transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform | None:
    """A cached LittleCMS transform from `icc` to sRGB, or None if the profile is unusable or sRGB."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(source) or "").lower()
    except (OSError, ImageCms.PyCMSError, TypeError, ValueError):
        return None  # garbage ICC: treat the pixels as sRGB rather than fail the upload
    if "srgb" in description and in_mode == out_mode:
        return None
    try:
        return ImageCms.buildTransform(source, _srgb(), in_mode, out_mode, renderingIntent=ImageCms.Intent.PERCEPTUAL)
    except (ImageCms.PyCMSError, ValueError, OSError):
        return None


def normalise_mode(image: Image.Image) -> Image.Image:
    """16-bit, float, 1-bit, palette and exotic modes → L, LA, RGB, RGBA or CMYK."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        # Scale to 0..255 rather than clip: 16-bit data by 1/256; 32-bit integers and floats by
        # their own range (floats in 0..1 are the common case).
        wide = image if mode in ("I", "F") else image.convert("I")
        high = cast(tuple[float, float], wide.getextrema())[1] or 1  # one band: (min, max)
        if mode == "F":
            scale = 255 if high <= 1 else 255 / high
        else:
            scale = 1 / 256 if high <= 65535 else 255 / high
        return wide.point(lambda v: v * scale).convert("L")
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode in ("La", "LA"):
        return image.convert("LA") if mode == "La" else image
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode in ("L", "RGB", "RGBA", "CMYK", "RGBX"):  # RGBX: a zero-copy WebP decode; RGB after resizing
        return image
    return image.convert("RGBA" if "A" in mode else "RGB")


def drop_opaque_alpha(image: Image.Image) -> Image.Image:
    """RGBA/LA whose alpha is 255 everywhere → RGB/L: same pixels, and encoders (WebP above all)
    spend a large share of their time compressing an alpha plane that carries nothing.
    (`getextrema` scans every band in place; `getchannel` would copy the plane first.)"""
    if image.mode in ("RGBA", "LA") and cast(tuple[tuple[int, int], ...], image.getextrema())[-1][0] == 255:
        return image.convert(image.mode[:-1])
    return image


def is_rgb_profile(icc: bytes | None) -> bool:
    """An ICC profile for RGB data (its header names the colour space at bytes 16-20)."""
    return icc is not None and len(icc) >= 20 and icc[16:20] == b"RGB "


def to_srgb(image: Image.Image, icc: bytes | None, keep_icc: bool) -> Image.Image:
    """The image in 8-bit sRGB-compatible mode, converted through `icc`; with `keep_icc`, an RGB
    image keeps its RGB profile instead (the encoder embeds it). Any other profile (CMYK, grey)
    cannot describe the RGB output, so those pixels are always converted."""
    return convert_profile(drop_opaque_alpha(normalise_mode(image)), icc, keep_icc)


def convert_profile(image: Image.Image, icc: bytes | None, keep_icc: bool) -> Image.Image:
    """The colour-management half of `to_srgb`, for an image whose mode is already normalised
    (L, LA, RGB, RGBA, CMYK; RGBa/RGBX from a resize are brought back to RGBA/RGB first).

    The pipeline calls it on the resized variants, not on the full decode: a LittleCMS transform
    costs the same per pixel whatever the size, so converting after shrinking (as libvips does)
    makes it ~10-50× cheaper; resizing in the source's own encoding first is what libvips'
    thumbnail does too (`bench/processor.py` shows the SSIM)."""
    if image.mode == "RGBa":
        image = image.convert("RGBA")
    elif image.mode == "RGBX":
        image = image.convert("RGB")
    if keep_icc and is_rgb_profile(icc) and image.mode in ("RGB", "RGBA"):
        return image
    if icc and image.mode in ("RGB", "RGBA", "CMYK"):
        out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        transform = _transform(icc, image.mode, out_mode)
        if transform is not None:
            converted = ImageCms.applyTransform(image, transform)
            assert converted is not None  # None only in place
            return converted
    if image.mode == "CMYK":
        return image.convert("RGB")
    return image
