"""JPEGs carrying an HDR gain map (Ultra HDR, ISO 21496-1, Apple): the variants come from the SDR
picture, never from the grey gain map, and the result and the manifest say the gain map was dropped.

The files are built as phones write them: a coloured SDR JPEG, then a half-size grey JPEG joined
behind it by an MPF index (Pillow's MPO writer), with the gain-map metadata where each format
puts it."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from image_pipeline import ImageProcessor, VariantConfig, manifest
from tests.images import decode

SDR = (220, 40, 30)  # the picture: red
GREY = 128  # the gain map
BOTH = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" {attributes}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>')
ULTRA_HDR_PRIMARY = BOTH.format(
    attributes='xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" '
    'xmlns:Container="http://ns.google.com/photos/1.0/container/" '
    'xmlns:Item="http://ns.google.com/photos/1.0/container/item/" hdrgm:Version="1.0"',
    body='<Container:Directory><rdf:Seq>'
    '<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="Primary" Item:Mime="image/jpeg"/></rdf:li>'
    '<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="GainMap" Item:Mime="image/jpeg"'
    ' Item:Length="4000"/></rdf:li></rdf:Seq></Container:Directory>',
).encode()
ULTRA_HDR_GAIN_MAP = BOTH.format(
    attributes='xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0" hdrgm:GainMapMax="2.3"'
    ' hdrgm:HDRCapacityMax="2.3"', body="",
).encode()
APPLE_GAIN_MAP = BOTH.format(
    attributes='xmlns:HDRGainMap="http://ns.apple.com/HDRGainMap/1.0/" '
    'xmlns:apdi="http://ns.apple.com/pixeldatainfo/1.0/" HDRGainMap:HDRGainMapVersion="131072" '
    'apdi:AuxiliaryImageType="urn:com:apple:photo:2020:aux:hdrgainmap"', body="",
).encode()
ISO_APP2 = b"urn:iso:std:iso:ts:21496:-1\0" + struct.pack(">HH", 0, 0)  # minimum and writer version 0


def _gain_map_jpeg(primary_xmp: bytes | None = None, gain_map_xmp: bytes | None = None, size=(640, 480)) -> bytes:
    """A red SDR JPEG with a half-size grey gain map behind it, indexed by MPF."""
    gradient = Image.linear_gradient("L").resize(size)
    base = Image.merge("RGB", (Image.new("L", size, SDR[0]), gradient.point(lambda v: SDR[1] + v // 16),
                               Image.new("L", size, SDR[2])))
    gain_map = Image.new("L", (size[0] // 2, size[1] // 2), GREY)
    gain_map.encoderinfo = {"xmp": gain_map_xmp or b""}
    options = {"xmp": primary_xmp} if primary_xmp else {}
    buffer = io.BytesIO()
    base.save(buffer, "MPO", save_all=True, append_images=[gain_map], quality=92, **options)
    return buffer.getvalue()


def _with_app2(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with one more APP2 segment straight after SOI (the MPF offsets are relative to the
    MPF header, so they stay right)."""
    return jpeg[:2] + b"\xff\xe2" + struct.pack(">H", 2 + len(payload)) + payload + jpeg[2:]


@pytest.fixture(scope="module")
def ultra_hdr() -> bytes:
    return _gain_map_jpeg(ULTRA_HDR_PRIMARY, ULTRA_HDR_GAIN_MAP)


VARIANTS = [VariantConfig("large", 1920, 1920), VariantConfig("medium", 400, 400), VariantConfig("thumb", 64, 64)]


def _assert_made_from_the_sdr_picture(processed, size=(640, 480)):
    """Variants sized from the SDR picture and red like it (a grey gain map would be R = G = B)."""
    width, height = size
    fitted = [(s.name, *(round(side * min(1, s.max_width / max(size))) for side in size)) for s in VARIANTS]
    assert [(v.name, v.width, v.height) for v in processed.variants] == fitted
    for variant in processed.variants:
        image = decode(variant.data)
        assert (image.format, image.mode, getattr(image, "n_frames", 1)) == ("JPEG", "RGB", 1)
        r, g, b = image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        assert r > 200 and b < 50 and 40 <= g <= 60, (variant.name, (r, g, b))
    assert (processed.source.width, processed.source.height, processed.source.frames) == (width, height, 1)


def test_an_ultra_hdr_jpeg_gets_variants_from_its_sdr_picture_and_says_so(ultra_hdr):
    image = Image.open(io.BytesIO(ultra_hdr))  # the input: two JPEGs, an MPF index, hdrgm XMP on both
    assert b'hdrgm:Version="1.0"' in image.info["xmp"] and image.info["mp"] and ultra_hdr.count(b"\xff\xd8\xff") == 2
    second = Image.open(io.BytesIO(ultra_hdr[ultra_hdr.index(b"\xff\xd8\xff", 2):]))
    assert (second.mode, second.size) == ("L", (320, 240)) and b"hdr-gain-map" in second.info["xmp"]

    processed = ImageProcessor(VARIANTS).process_image(ultra_hdr)
    _assert_made_from_the_sdr_picture(processed)
    assert processed.source.gain_map == "ultrahdr"


def test_an_iso_21496_gain_map_jpeg(ultra_hdr):
    """Only ISO 21496-1 metadata (no hdrgm XMP): Pillow opens it as a two-picture MPO."""
    data = _with_app2(_gain_map_jpeg(), ISO_APP2)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    processed = ImageProcessor(VARIANTS).process_image(data)
    _assert_made_from_the_sdr_picture(processed)
    assert processed.source.gain_map == "iso21496"


def test_an_ultra_hdr_jpeg_with_iso_21496_metadata_too_is_named_ultra_hdr():
    data = _with_app2(_gain_map_jpeg(ULTRA_HDR_PRIMARY, ULTRA_HDR_GAIN_MAP), ISO_APP2)
    assert ImageProcessor(VARIANTS).process_image(data).source.gain_map == "ultrahdr"


def test_an_apple_hdr_jpeg_found_from_its_second_pictures_header():
    """iPhone: nothing in the primary's XMP; the MPF's second picture says it is a gain map."""
    data = _gain_map_jpeg(None, APPLE_GAIN_MAP, size=(600, 800))
    processed = ImageProcessor(VARIANTS).process_image(data)
    _assert_made_from_the_sdr_picture(processed, size=(600, 800))
    assert processed.source.gain_map == "apple"


def test_a_plain_jpeg_and_a_plain_two_picture_mpo_have_no_gain_map():
    plain = io.BytesIO()
    Image.new("RGB", (640, 480), SDR).save(plain, "JPEG")
    assert ImageProcessor(VARIANTS).process_image(plain.getvalue()).source.gain_map is None
    processed = ImageProcessor(VARIANTS).process_image(_gain_map_jpeg())  # e.g. a stereo camera's MPO
    assert processed.source.gain_map is None
    _assert_made_from_the_sdr_picture(processed)


def test_the_manifest_says_the_gain_map_was_dropped(ultra_hdr):
    processed = ImageProcessor(VARIANTS).process_image(ultra_hdr)
    record = manifest.build(
        bucket="b", key="raw/hdr.jpg", etag="e", processed=processed,
        variant_keys={v.name: f"processed/hdr/{v.name}.jpg" for v in processed.variants}, total_ms=1.0, fingerprint="f",
    )
    assert record["source"]["gain_map"] == {"type": "ultrahdr", "kept": False}
    assert {k: record["source"][k] for k in ("type", "width", "height", "frames")} == {
        "type": "jpeg", "width": 640, "height": 480, "frames": 1,
    }
    assert [(v["width"], v["height"]) for v in record["variants"]] == [(640, 480), (400, 300), (64, 48)]
    plain = ImageProcessor(VARIANTS).process_image(decode_to_jpeg(ultra_hdr))
    plain_record = manifest.build(
        bucket="b", key="raw/p.jpg", etag="e", processed=plain,
        variant_keys={v.name: v.name for v in plain.variants}, total_ms=1.0, fingerprint="f",
    )
    assert plain_record["source"]["gain_map"] is None


def decode_to_jpeg(data: bytes) -> bytes:
    """The SDR picture alone, re-encoded: no XMP, no MPF."""
    buffer = io.BytesIO()
    decode(data).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()
