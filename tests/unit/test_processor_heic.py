"""HEIC written by pillow-heif: variants, and our limits (MAX_PIXELS) rather than the libraries'."""

from __future__ import annotations

import pytest
from PIL import Image

from image_pipeline import ImageProcessor, VariantConfig
from image_pipeline.errors import TooManyPixels
from image_pipeline.processor import Limits
from tests.images import decode, encode, photo


@pytest.fixture(scope="module")
def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return encode(decode(photo(800, 600)), "HEIF", quality=80)


def test_a_heic_gets_jpeg_variants(heic):
    variants = ImageProcessor([VariantConfig("m", 400, 400)]).process(heic)
    assert [(v.width, v.height, v.format.value) for v in variants] == [(400, 300, "jpeg")]


def test_our_pixel_limit_rejects_a_heic_with_our_message(heic):
    with pytest.raises(TooManyPixels, match="over the 400000-pixel limit"):
        ImageProcessor(limits=Limits(max_pixels=400_000)).process(heic)
    with pytest.raises(TooManyPixels, match="over the 10000-pixel limit"):  # far over: Pillow's bomb check
        ImageProcessor(limits=Limits(max_pixels=10_000)).process(heic)


@pytest.mark.parametrize("fmt", ["HEIF", "JPEG", "PNG"])
def test_a_pixel_limit_above_pillows_own_is_honoured(fmt, monkeypatch):
    """Pillow refuses more than 2 × MAX_IMAGE_PIXELS on its own (≈179 MP by default: a 200 MP
    phone photo). Scaled down here: Pillow's default lowered to 0.1 MP, our limit 10 MP."""
    data = encode(decode(photo(800, 600)), fmt)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    (v,) = ImageProcessor([VariantConfig("m", 400, 400)], limits=Limits(max_pixels=10_000_000)).process(data)
    assert (v.width, v.height) == (400, 300)
    assert Image.MAX_IMAGE_PIXELS == 100_000  # restored
