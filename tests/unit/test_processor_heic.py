"""HEIC written by pillow-heif: variants, and our limits (MAX_PIXELS) rather than the libraries'.

libheif's own security limits stay on (items, references, boxes, extents); when one trips, the
error is ours (too_many_pixels for size or memory, corrupt_image otherwise) and names it."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from image_pipeline import ImageProcessor, VariantConfig
from image_pipeline.errors import CorruptImage, TooManyPixels
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


# -- phone HEICs: many pictures and items, HDR, libheif's own limits --------------------------------

PRIMARY = (200, 30, 30)


def _colour_of(variant) -> tuple[int, int, int]:
    return decode(variant.data).convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))


def _near(colour, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


@pytest.fixture(scope="module")
def crowded_heic() -> bytes:
    """Shaped like an iPhone HEIC, with many items: the primary (the second top-level picture, red,
    1024×768) is a grid of 192 tiles with two thumbnails, EXIF and XMP; three other top-level
    pictures of other colours and sizes come before and after it."""
    import pillow_heif

    pictures = [
        ((320, 240), (0, 0, 200)),
        ((1024, 768), PRIMARY),
        ((200, 200), (20, 160, 20)),
        ((64, 64), (240, 240, 0)),
    ]
    heif = pillow_heif.from_pillow(Image.new("RGB", *pictures[0]))
    for size, colour in pictures[1:]:
        heif.add_from_pillow(Image.new("RGB", size, colour))
    exif = Image.Exif()
    exif[0x010F] = "TestPhone"
    buffer = io.BytesIO()
    heif.save(
        buffer,
        quality=70,
        primary_index=1,
        tile_size=64,
        thumbnails=[128, 256],
        exif=exif.tobytes(),
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>',
    )
    return buffer.getvalue()


def test_a_heic_with_many_pictures_and_items_gets_variants_from_its_primary(crowded_heic):
    opened = Image.open(io.BytesIO(crowded_heic))  # the input is what it claims to be
    assert (
        opened.size,
        opened.n_frames,
        opened.info["tiling"]["num_columns"] * opened.info["tiling"]["num_rows"],
        opened.info["thumbnails"],
    ) == ((1024, 768), 4, 192, [128, 256])

    processed = ImageProcessor([VariantConfig("large", 2048, 2048), VariantConfig("s", 100, 100)]).process_image(
        crowded_heic
    )
    assert [(v.width, v.height, v.format.value) for v in processed.variants] == [(1024, 768, "jpeg"), (100, 75, "jpeg")]
    assert all(_near(_colour_of(v), PRIMARY) for v in processed.variants)
    source = processed.source
    assert (source.type, source.width, source.height, source.frames, source.gain_map) == ("heif", 1024, 768, 1, None)


def test_a_10_bit_heic_becomes_8_bit_srgb_variants_of_its_colour():
    import pillow_heif

    width, height = 320, 240
    pixels = struct.pack("<3H", 50000, 12000, 6000) * (width * height)
    ten_bit = pillow_heif.from_bytes("RGB;16", (width, height), pixels)
    buffer = io.BytesIO()
    ten_bit.save(buffer, quality=90)
    assert Image.open(io.BytesIO(buffer.getvalue())).info["bit_depth"] == 10

    processed = ImageProcessor([VariantConfig("m", 160, 160, format="png")]).process_image(buffer.getvalue())
    (variant,) = processed.variants
    image = decode(variant.data)
    assert (image.mode, image.size) == ("RGB", (160, 120))
    assert _near(image.getpixel((80, 60)), (50000 * 255 // 65535, 12000 * 255 // 65535, 6000 * 255 // 65535), 4)


def test_an_apple_gain_map_heic_is_recorded_from_its_xmp():
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:HDRGainMap="http://ns.apple.com/HDRGainMap/1.0/" '
        b'HDRGainMap:HDRGainMapVersion="65536"/></rdf:RDF></x:xmpmeta>'
    )
    data = encode(Image.new("RGB", (320, 240), PRIMARY), "HEIF", quality=80, xmp=xmp)
    processed = ImageProcessor([VariantConfig("m", 160, 160)]).process_image(data)
    assert processed.source.gain_map == "apple" and _near(_colour_of(processed.variants[0]), PRIMARY)


def _with_ispe(heic: bytes, width: int, height: int) -> bytes:
    """`heic` declaring another size in its (only) `ispe` box."""
    at = heic.index(b"ispe") + 8  # after the type, version and flags
    assert heic.count(b"ispe") == 1
    return heic[:at] + struct.pack(">II", width, height) + heic[at + 8 :]


def test_our_pixel_limit_decides_and_libheifs_size_limit_is_too_many_pixels_naming_it(heic):
    """A header declaring 40000×40000 (1.6 GP, over libheif's 32768² limit): our MAX_PIXELS refuses
    it from the header, with our message, nothing decoded. Scaled: with our limit raised to 2 GP the
    header passes it and libheif's own size limit (kept on) refuses the decode: still our typed
    error, with libheif's words."""
    declared_huge = _with_ispe(heic, 40000, 40000)
    with pytest.raises(TooManyPixels, match="over the 60000000-pixel limit"):
        ImageProcessor().process(declared_huge)
    processor = ImageProcessor([VariantConfig("m", 400, 400)], limits=Limits(max_pixels=2_000_000_000))
    with pytest.raises(TooManyPixels, match=r"decoder security limit .*Image size 40000x40000 exceeds the maximum"):
        processor.process(declared_huge)


def test_libheifs_other_security_limits_are_corrupt_image_naming_the_limit(heic):
    """libheif refuses more than 100 child boxes in one box (its item, reference, extent limits
    work alike): the message says which limit, not just "cannot identify image file"."""
    start = heic.index(b"meta") - 4
    (size,) = struct.unpack(">I", heic[start : start + 4])
    extra = struct.pack(">I4s", 8, b"free") * 101
    meta = struct.pack(">I", size + len(extra)) + heic[start + 4 : start + size] + extra
    crowded = heic[:start] + meta + heic[start + size :]
    with pytest.raises(CorruptImage, match=r"security limit .*Maximum number of child boxes \(100\) in 'meta' box"):
        ImageProcessor().process(crowded)


# -- HDR10 (PQ / HLG) HEICs: tone-mapped to SDR --------------------------------------------------------


def _pq(nits: float) -> float:
    m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
    power = (nits / 10000) ** m1
    return ((c1 + c2 * power) / (1 + c3 * power)) ** m2


def _hlg(nits: float) -> float:
    """The HLG signal a 1000-nit display shows as `nits` (per channel: OOTF γ 1.2, then the OETF)."""
    import math

    scene = (nits / 1000) ** (1 / 1.2)
    a = 0.17883277
    return (
        math.sqrt(3 * scene) if scene <= 1 / 12 else a * math.log(12 * scene - (1 - 4 * a)) + 0.5 - a * math.log(4 * a)
    )


def _srgb(linear: float) -> int:
    return round(255 * (12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055))


# BT.2020 linear of an sRGB-gamut green: sRGB (0, 1, 0) through the BT.709 → BT.2020 matrix.
SRGB_GREEN_IN_BT2020 = (0.3293, 0.9195, 0.0880)


def _hdr10_heic(transfer: int, encode_signal) -> bytes:
    """A 10-bit BT.2020 HEIC (4:4:4) with four vertical patches, in display light: 36.5 nits (an
    18 % grey under 203-nit reference white), 203 nits (reference white), 1000 nits, and 100-nit
    sRGB-gamut green; signalled in its nclx box as PQ (16) or HLG (18)."""
    import pillow_heif

    width, height = 256, 64
    patches = [(36.5,) * 3, (203.0,) * 3, (1000.0,) * 3, tuple(100 * c for c in SRGB_GREEN_IN_BT2020)]
    row = b"".join(
        struct.pack("<3H", *(round(encode_signal(n) * 65535) for n in patches[x * 4 // width])) for x in range(width)
    )
    heif = pillow_heif.from_bytes("RGB;16", (width, height), row * height)
    buffer = io.BytesIO()
    heif.save(
        buffer,
        quality=-1,
        chroma=444,
        color_primaries=9,
        transfer_characteristics=transfer,
        matrix_coefficients=9,
        full_range_flag=1,
    )
    return buffer.getvalue()


@pytest.mark.parametrize(("transfer", "encode_signal"), [(16, _pq), (18, _hlg)], ids=["pq", "hlg"])
def test_an_hdr10_heic_is_tone_mapped_not_shown_flat(transfer, encode_signal):
    data = _hdr10_heic(transfer, encode_signal)
    assert Image.open(io.BytesIO(data)).info["nclx_profile"]["transfer_characteristics"] == transfer
    (variant,) = ImageProcessor([VariantConfig("m", 256, 64, format="png")]).process(data)
    grey, white, peak, green = (decode(variant.data).getpixel((32 + 64 * i, 32)) for i in range(4))
    # Below the knee (~100 nits) display light is kept: 18 % of reference white is 18 % of SDR white.
    assert _near(grey, (_srgb(0.18),) * 3, 4), grey
    # Reference white just under SDR white (the BT.2390 roll-off starts below it), the peak at it.
    assert all(222 <= c <= 236 for c in white) and _near(peak, (255, 255, 255), 1), (white, peak)
    # A BT.2020-encoded sRGB green comes out as sRGB green (the primaries are converted) at 100/203.
    assert green[1] > 180 and green[0] < 30 and green[2] < 30, green


def test_a_flat_narrowing_is_what_an_hdr10_heic_used_to_get():
    """The same PQ file read as if it were sRGB (today's behaviour for untagged 8-bit data) is
    far off: 203-nit white lands at 148 of 255, an 18 % grey at 107."""
    data = _hdr10_heic(16, _pq)
    flat = Image.open(io.BytesIO(data)).convert("RGB")
    assert _near(flat.getpixel((32, 32)), (107, 107, 107), 3) and _near(flat.getpixel((96, 32)), (148, 148, 148), 3)


def test_an_sdr_10_bit_heic_is_not_tone_mapped():
    """No PQ/HLG in the nclx box (here sRGB's 13): the pixels go through as before."""
    data = _hdr10_heic(13, lambda nits: min(nits / 203, 1.0) ** (1 / 2.2))
    (variant,) = ImageProcessor([VariantConfig("m", 256, 64, format="png")]).process(data)
    assert _near(decode(variant.data).getpixel((32, 32)), (round(255 * (36.5 / 203) ** (1 / 2.2)),) * 3, 3)
