"""JPEGs carrying an HDR gain map (Ultra HDR, ISO 21496-1, Apple): the variants come from the SDR
picture, never from the grey gain map; variants marked `hdr` carry an Ultra HDR / ISO 21496-1 gain
map on as Ultra HDR JPEGs, the others are what they always were, and the manifest says which.

The inputs are built as phones write them: a coloured SDR JPEG, then a smaller grey JPEG joined
behind it by an MPF index (Pillow's MPO writer), with the gain-map metadata where each format puts
it. The outputs are read back with Pillow's MPF parser and ElementTree, not with the processor's
own reader."""

from __future__ import annotations

import io
import re
import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import pytest
from PIL import Image, ImageChops

from image_pipeline import ImageProcessor, VariantConfig, manifest
from image_pipeline.processor import fingerprint as fingerprints
from image_pipeline.processor import uhdr
from image_pipeline.settings import parse_variants
from tests.images import apple_exif, decode

SDR = (220, 40, 30)  # the picture: red
GREY = 128  # the gain map
BOTH = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" {attributes}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>'
)
ULTRA_HDR_PRIMARY = BOTH.format(
    attributes='xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" '
    'xmlns:Container="http://ns.google.com/photos/1.0/container/" '
    'xmlns:Item="http://ns.google.com/photos/1.0/container/item/" hdrgm:Version="1.0"',
    body="<Container:Directory><rdf:Seq>"
    '<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="Primary" Item:Mime="image/jpeg"/></rdf:li>'
    '<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="GainMap" Item:Mime="image/jpeg"'
    ' Item:Length="4000"/></rdf:li></rdf:Seq></Container:Directory>',
).encode()
ULTRA_HDR_GAIN_MAP = BOTH.format(
    attributes='xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0" hdrgm:GainMapMax="2.3"'
    ' hdrgm:HDRCapacityMax="2.3"',
    body="",
).encode()
APPLE_GAIN_MAP = BOTH.format(
    attributes='xmlns:HDRGainMap="http://ns.apple.com/HDRGainMap/1.0/" '
    'xmlns:apdi="http://ns.apple.com/pixeldatainfo/1.0/" HDRGainMap:HDRGainMapVersion="131072" '
    'apdi:AuxiliaryImageType="urn:com:apple:photo:2020:aux:hdrgainmap"',
    body="",
).encode()
ISO_APP2 = b"urn:iso:std:iso:ts:21496:-1\0" + struct.pack(">HH", 0, 0)  # minimum and writer version 0


def _gain_map_jpeg(primary_xmp: bytes | None = None, gain_map_xmp: bytes | None = None, size=(640, 480)) -> bytes:
    """A red SDR JPEG with a half-size grey gain map behind it, indexed by MPF."""
    gradient = Image.linear_gradient("L").resize(size)
    base = Image.merge(
        "RGB", (Image.new("L", size, SDR[0]), gradient.point(lambda v: SDR[1] + v // 16), Image.new("L", size, SDR[2]))
    )
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
    second = Image.open(io.BytesIO(ultra_hdr[ultra_hdr.index(b"\xff\xd8\xff", 2) :]))
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


def _record(processed) -> dict:
    """The manifest `manifest.build` writes for `processed`."""
    return manifest.build(
        bucket="b",
        key="raw/hdr.jpg",
        etag="e",
        processed=processed,
        variant_keys={v.name: f"processed/hdr/{v.name}" for v in processed.variants},
        total_ms=1.0,
        fingerprint="f",
    )


def test_the_manifest_says_the_gain_map_was_dropped(ultra_hdr):
    processed = ImageProcessor(VARIANTS).process_image(ultra_hdr)
    record = _record(processed)
    assert record["source"]["gain_map"] == {"type": "ultrahdr", "kept": False}
    assert {k: record["source"][k] for k in ("type", "width", "height", "frames")} == {
        "type": "jpeg",
        "width": 640,
        "height": 480,
        "frames": 1,
    }
    assert [(v["width"], v["height"]) for v in record["variants"]] == [(640, 480), (400, 300), (64, 48)]
    assert _record(ImageProcessor(VARIANTS).process_image(decode_to_jpeg(ultra_hdr)))["source"]["gain_map"] is None


def decode_to_jpeg(data: bytes) -> bytes:
    """The SDR picture alone, re-encoded: no XMP, no MPF."""
    buffer = io.BytesIO()
    decode(data).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


# -- `hdr` variants: Ultra HDR JPEGs -----------------------------------------------------------------

ISO_NS = b"urn:iso:std:iso:ts:21496:-1\0"
NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "hdrgm": "http://ns.adobe.com/hdr-gain-map/1.0/",
    "Container": "http://ns.google.com/photos/1.0/container/",
    "Item": "http://ns.google.com/photos/1.0/container/item/",
}
# A single-channel ISO 21496-1 block (minimum/writer version 0, flags: base colour space), with
# headrooms 0 → 2.5 stops and the map spanning 0 → 2.5 stops, gamma 1, offsets 1/64.
ISO_METADATA = (
    struct.pack(">HHB", 0, 0, 0x40)
    + struct.pack(">IIII", 0, 1, 5, 2)
    + struct.pack(">iIiIIIiIiI", 0, 1, 5, 2, 1, 1, 1, 64, 1, 64)
)
GAIN_MAP_XMP_FULL = BOTH.format(
    attributes='xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0" hdrgm:GainMapMin="-0.5"'
    ' hdrgm:GainMapMax="3.25" hdrgm:Gamma="1.5" hdrgm:OffsetSDR="0.01" hdrgm:OffsetHDR="0.02"'
    ' hdrgm:HDRCapacityMin="0.25" hdrgm:HDRCapacityMax="3.25" hdrgm:BaseRenditionIsHDR="False"'
    ' xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="Jane Doe, 12 Secret Street"',
    body="",
).encode()
LEVELS = (30, 90, 160, 230)  # the gain map's quadrants, stored top-left, top-right, bottom-left, bottom-right


def _app2(payload: bytes) -> bytes:
    return b"\xff\xe2" + struct.pack(">H", 2 + len(payload)) + payload


def _ultra_hdr(
    primary: Image.Image,
    gain_map: Image.Image,
    *,
    primary_xmp=ULTRA_HDR_PRIMARY,
    gain_map_xmp=ULTRA_HDR_GAIN_MAP,
    iso: bytes | None = None,
    orientation: int = 1,
    exif: Image.Exif | None = None,
) -> bytes:
    """A phone-style gain-map JPEG: `primary`, then `gain_map` behind an MPF index (Pillow's MPO
    writer), hdrgm XMP on each where given, ISO 21496-1 (the primary's version block, the map's
    metadata) where given, EXIF (with the orientation) on the primary."""
    gain_map.encoderinfo = {"xmp": gain_map_xmp or b"", "exif": b"", "extra": _app2(ISO_NS + iso) if iso else b""}
    options = {"xmp": primary_xmp} if primary_xmp else {}
    if orientation != 1 or exif is not None:
        exif = exif or Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    primary.save(buffer, "MPO", save_all=True, append_images=[gain_map], quality=92, **options)
    data = buffer.getvalue()
    return _with_app2(data, ISO_NS + b"\0\0\0\0") if iso else data


def _scene(size=(640, 480)) -> Image.Image:
    """Big grey blocks with a bright square off centre and a saturated red patch at the right edge
    (where an `attention` crop goes): structure a misplaced gain map cannot hide."""
    width, height = size
    image = Image.new("RGB", size, (40, 40, 40))
    image.paste((120, 120, 120), (width // 2, 0, width, height // 2))
    image.paste((200, 200, 200), (0, height // 2, width // 2, height))
    image.paste((250, 250, 250), (width * 5 // 8, height * 5 // 8, width * 3 // 4, height * 3 // 4))
    image.paste((255, 0, 0), (width - width // 10, height // 3, width, height * 2 // 3))
    return image


def _quadrants(size) -> Image.Image:
    width, height = size
    gain_map = Image.new("L", size, LEVELS[0])
    gain_map.paste(LEVELS[1], (width // 2, 0, width, height // 2))
    gain_map.paste(LEVELS[2], (0, height // 2, width // 2, height))
    gain_map.paste(LEVELS[3], (width // 2, height // 2, width, height))
    return gain_map


@dataclass
class Container:
    """An output read back without the processor's code."""

    primary: bytes  # the first picture (MPF entry 0)
    gain_map: bytes  # the second (MPF entry 1)
    entries: list  # Pillow's parse of the MP entries
    primary_xmp: ElementTree.Element
    gain_map_xmp: ElementTree.Element | None
    primary_iso: bytes | None
    gain_map_iso: bytes | None


def _app_segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    found, pos = [], 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        found.append((jpeg[pos + 1], jpeg[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return found


def _xmp_of(jpeg: bytes) -> ElementTree.Element | None:
    for marker, payload in _app_segments(jpeg):
        if marker == 0xE1 and payload.startswith(b"http://ns.adobe.com/xap/1.0/\0"):
            return ElementTree.fromstring(payload[29:])
    return None


def _iso_of(jpeg: bytes) -> bytes | None:
    return next((p[len(ISO_NS) :] for m, p in _app_segments(jpeg) if m == 0xE2 and p.startswith(ISO_NS)), None)


def _read(data: bytes) -> Container:
    """Pillow parses the MPF index (JpegImageFile._getmp); the offsets are checked by hand."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"  # Pillow opens an Ultra HDR JPEG as its primary, like any SDR reader
    entries = image._getmp()[0xB002]
    assert image._getmp()[0xB001] == 2 and len(entries) == 2
    mpf_header = data.index(b"MPF\0") + 4  # the MP entries' offsets count from the TIFF header after it
    primary_size, map_offset, map_size = entries[0]["Size"], mpf_header + entries[1]["DataOffset"], entries[1]["Size"]
    assert entries[0]["DataOffset"] == 0 and map_offset == primary_size and map_offset + map_size == len(data)
    primary, gain_map = data[:primary_size], data[map_offset:]
    assert primary[-2:] == b"\xff\xd9" and gain_map[:2] == b"\xff\xd8" and gain_map[-2:] == b"\xff\xd9"
    return Container(
        primary, gain_map, entries, _xmp_of(primary), _xmp_of(gain_map), _iso_of(primary), _iso_of(gain_map)
    )


def _description(xmp: ElementTree.Element) -> ElementTree.Element:
    return xmp.find("rdf:RDF/rdf:Description", NS)


def _hdrgm(xmp: ElementTree.Element) -> dict[str, str]:
    prefix = "{" + NS["hdrgm"] + "}"
    return {k[len(prefix) :]: v for k, v in _description(xmp).attrib.items() if k.startswith(prefix)}


def _iso_values(payload: bytes) -> dict:
    """An ISO 21496-1 block read by hand (without a common denominator; the first channel)."""
    minimum_version, _writer, flags = struct.unpack_from(">HHB", payload)
    assert minimum_version == 0 and not flags & 0x08
    numbers = struct.unpack_from(">IIII", payload, 5) + struct.unpack_from(">iIiIIIiIiI", payload, 21)
    fractions = [numbers[i] / numbers[i + 1] for i in range(0, 14, 2)]
    names = ("base_headroom", "alternate_headroom", "min", "max", "gamma", "base_offset", "alternate_offset")
    flagged = {"channels": 3 if flags & 0x80 else 1, "base_colour_space": bool(flags & 0x40)}
    return {**flagged, **dict(zip(names, fractions, strict=True))}


def _numbers(values: dict[str, str]) -> dict[str, float | str]:
    return {k: v if k in ("Version", "BaseRenditionIsHDR") else float(v) for k, v in values.items()}


def _without_our_segments(primary: bytes) -> bytes:
    """The primary with the XMP, ISO and MPF segments the writer adds taken out again."""
    out, pos = bytearray(primary[:2]), 2
    while primary[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", primary[pos + 2 : pos + 4])
        payload = primary[pos + 4 : pos + 2 + length]
        ours = (primary[pos + 1] == 0xE1 and payload.startswith(b"http://ns.adobe.com/xap/")) or (
            primary[pos + 1] == 0xE2 and payload.startswith((b"MPF\0", ISO_NS))
        )
        if not ours:
            out += primary[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out + primary[pos:])


HDR = [
    VariantConfig("large", 480, 480, format="jpeg", hdr=True),
    VariantConfig("thumb", 120, 120, format="jpeg", fit="cover", hdr=True),
    VariantConfig("medium", 320, 320, format="webp"),
]
PLAIN = [VariantConfig(v.name, v.max_width, v.max_height, format=v.format, fit=v.fit) for v in HDR]


@pytest.fixture(scope="module")
def hdr_input() -> bytes:
    return _ultra_hdr(_scene(), _quadrants((160, 120)))


def test_an_hdr_variant_is_an_ultra_hdr_jpeg_whose_primary_is_todays_variant(hdr_input):
    hdr, plain = ImageProcessor(HDR).process_image(hdr_input), ImageProcessor(PLAIN).process_image(hdr_input)
    for ours, today in zip(hdr.variants[:2], plain.variants[:2], strict=True):
        container = _read(ours.data)
        # The SDR picture is today's variant: the same bytes, three header segments more.
        assert _without_our_segments(container.primary) == today.data
        assert decode(container.primary).tobytes() == decode(today.data).tobytes()
        assert (ours.width, ours.height, ours.content_type) == (today.width, today.height, "image/jpeg")
        gain_map = decode(container.gain_map)
        assert gain_map.mode == "L" and gain_map.size == (round(ours.width / 4), round(ours.height / 4))
        assert ours.gain_map == {"type": "ultrahdr", "kept": True} and today.gain_map is None
    assert hdr.variants[2].data == plain.variants[2].data and hdr.variants[2].gain_map is None  # WebP stays SDR


def test_the_xmp_directory_and_the_gain_map_metadata_are_written_as_libultrahdr_reads_them():
    data = _ultra_hdr(_scene(), _quadrants((160, 120)), gain_map_xmp=GAIN_MAP_XMP_FULL)
    variant = ImageProcessor(HDR[:1]).process_image(data).variants[0]
    container = _read(variant.data)
    description = _description(container.primary_xmp)
    assert description.get(f"{{{NS['hdrgm']}}}Version") == "1.0"
    items = description.findall("Container:Directory/rdf:Seq/rdf:li/Container:Item", NS)
    assert [(i.get(f"{{{NS['Item']}}}Semantic"), i.get(f"{{{NS['Item']}}}Mime")) for i in items] == [
        ("Primary", "image/jpeg"),
        ("GainMap", "image/jpeg"),
    ]
    assert int(items[1].get(f"{{{NS['Item']}}}Length")) == len(container.gain_map) == container.entries[1]["Size"]
    assert container.entries[0]["Attribute"]["MPType"] == "Baseline MP Primary Image"
    # The gain map's values, as attributes (libultrahdr's parser reads only those), and nothing
    # else of the upload's XMP (its dc:creator is gone).
    assert _numbers(_hdrgm(container.gain_map_xmp)) == {
        "Version": "1.0",
        "GainMapMin": -0.5,
        "GainMapMax": 3.25,
        "Gamma": 1.5,
        "OffsetSDR": 0.01,
        "OffsetHDR": 0.02,
        "HDRCapacityMin": 0.25,
        "HDRCapacityMax": 3.25,
        "BaseRenditionIsHDR": "False",
    }
    assert b"Jane Doe" not in variant.data and b"purl.org/dc" not in variant.data
    # The upload had no ISO 21496-1 block: the same numbers are given as one (Apple's and newer
    # readers look there), and the primary says so with the version block.
    assert container.primary_iso == b"\0\0\0\0"
    assert _iso_values(container.gain_map_iso) == pytest.approx(
        {
            "channels": 1,
            "base_colour_space": True,
            "base_headroom": 0.25,
            "alternate_headroom": 3.25,
            "min": -0.5,
            "max": 3.25,
            "gamma": 1.5,
            "base_offset": 0.01,
            "alternate_offset": 0.02,
        }
    )


def test_missing_optional_values_get_the_formats_defaults(hdr_input):
    container = _read(ImageProcessor(HDR[:1]).process_image(hdr_input).variants[0].data)
    assert _numbers(_hdrgm(container.gain_map_xmp)) == {
        "Version": "1.0",
        "BaseRenditionIsHDR": "False",
        "GainMapMin": 0.0,
        "GainMapMax": 2.3,
        "Gamma": 1.0,
        "OffsetSDR": 1 / 64,
        "OffsetHDR": 1 / 64,
        "HDRCapacityMin": 0.0,
        "HDRCapacityMax": 2.3,
    }


def test_iso_21496_metadata_is_kept_byte_for_byte_and_given_as_xmp_too():
    """An ISO-only upload (what libultrahdr 1.2+ writes): the block rides along verbatim, the primary
    keeps its version block, and the same numbers are written as hdrgm XMP for older readers."""
    data = _ultra_hdr(_scene(), _quadrants((160, 120)), primary_xmp=None, gain_map_xmp=None, iso=ISO_METADATA)
    variant = ImageProcessor(HDR[:1]).process_image(data).variants[0]
    assert variant.gain_map == {"type": "iso21496", "kept": True}
    container = _read(variant.data)
    assert container.gain_map_iso == ISO_METADATA and container.primary_iso == b"\0\0\0\0"
    assert _numbers(_hdrgm(container.gain_map_xmp)) == {
        "Version": "1.0",
        "BaseRenditionIsHDR": "False",
        "GainMapMin": 0.0,
        "GainMapMax": 2.5,
        "Gamma": 1.0,
        "OffsetSDR": 1 / 64,
        "OffsetHDR": 1 / 64,
        "HDRCapacityMin": 0.0,
        "HDRCapacityMax": 2.5,
    }


def test_both_kinds_of_metadata_are_both_kept():
    data = _ultra_hdr(_scene(), _quadrants((160, 120)), gain_map_xmp=GAIN_MAP_XMP_FULL, iso=ISO_METADATA)
    container = _read(ImageProcessor(HDR[:1]).process_image(data).variants[0].data)
    assert container.gain_map_iso == ISO_METADATA and float(_hdrgm(container.gain_map_xmp)["GainMapMax"]) == 3.25


def _quadrant_levels(gain_map: Image.Image) -> tuple[int, ...]:
    """The gain map's value at the centre of each quadrant: top-left, top-right, bottom-left, bottom-right."""
    w, h = gain_map.size
    return tuple(gain_map.getpixel((x * w // 4, y * h // 4)) for y in (1, 3) for x in (1, 3))


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (1, (0, 1, 2, 3)),
        (2, (1, 0, 3, 2)),  # mirrored left-right
        (3, (3, 2, 1, 0)),  # rotated 180°
        (4, (2, 3, 0, 1)),  # mirrored top-bottom
        (5, (0, 2, 1, 3)),  # transposed
        (6, (2, 0, 3, 1)),  # rotated 90° clockwise to show
        (7, (3, 1, 2, 0)),  # transversed
        (8, (1, 3, 0, 2)),  # rotated 90° anticlockwise to show
    ],
)
def test_the_gain_map_follows_the_exif_orientation(orientation, upright):
    data = _ultra_hdr(_scene(), _quadrants((160, 120)), orientation=orientation)
    variant = ImageProcessor(HDR[:1]).process_image(data).variants[0]
    swapped = orientation >= 5
    assert (variant.width, variant.height) == ((360, 480) if swapped else (480, 360))
    gain_map = decode(_read(variant.data).gain_map)
    assert gain_map.size == ((90, 120) if swapped else (120, 90))
    assert all(abs(got - LEVELS[i]) <= 3 for got, i in zip(_quadrant_levels(gain_map), upright, strict=True)), (
        _quadrant_levels(gain_map),
        [LEVELS[i] for i in upright],
    )


def test_a_cover_crop_cuts_the_gain_map_where_it_cuts_the_picture():
    """Vertical bands 0..3 across the stored gain map; a 1:1 crop of a 4:3 picture keeps 3/4 of its
    width: the west crop keeps bands 0-2, the east one bands 1-3, each a third of the square map."""
    bands = Image.new("L", (160, 120))
    for i, level in enumerate(LEVELS):
        bands.paste(level, (40 * i, 0, 40 * (i + 1), 120))
    data = _ultra_hdr(_scene(), bands)
    gravities = ("west", "east", "centre")
    specs = [VariantConfig(g, 240, 240, format="jpeg", fit="cover", gravity=g, hdr=True) for g in gravities]
    made = {v.name: decode(_read(v.data).gain_map) for v in ImageProcessor(specs).process_image(data).variants}
    assert {gain_map.size for gain_map in made.values()} == {(60, 60)}
    thirds = {name: [gain_map.getpixel((x, 30)) for x in (10, 30, 50)] for name, gain_map in made.items()}
    assert all(abs(a - b) <= 3 for a, b in zip(thirds["west"], LEVELS[:3], strict=True)), thirds
    assert all(abs(a - b) <= 3 for a, b in zip(thirds["east"], LEVELS[1:], strict=True)), thirds
    # centre: from the middle of band 0 (x 20 of 160) to the middle of band 3 (x 140)
    centre = made["centre"]
    assert abs(centre.getpixel((2, 30)) - LEVELS[0]) <= 3 and abs(centre.getpixel((57, 30)) - LEVELS[3]) <= 3


def _slopes(size=(640, 480)) -> Image.Image:
    """Grey rising to the right and downwards (so a gain map off by a few pixels shows everywhere),
    with a saturated red patch at the right edge for `attention` to crop towards."""
    width, height = size
    grey = Image.blend(Image.linear_gradient("L").rotate(90).resize(size), Image.linear_gradient("L").resize(size), 0.4)
    image = Image.merge("RGB", (grey, grey, grey))
    image.paste((255, 0, 0), (width - width // 10, height // 3, width, height * 2 // 3))
    return image


def _misfit(variant) -> float:
    """How far the variant's gain map is from lining up with its picture, for an input whose gain
    map is the picture's own luminance: mean |difference| after scaling the map to the picture."""
    container = _read(variant.data)
    picture = decode(container.primary).convert("L")
    gain_map = decode(container.gain_map).resize(picture.size, Image.Resampling.BILINEAR)
    return sum(ImageChops.difference(picture, gain_map).get_flattened_data()) / (picture.width * picture.height)


def _luminance_map(scene: Image.Image, shift: int = 0) -> Image.Image:
    """The scene's luminance at 1/4 size (a phone's gain-map scale), moved `shift` map pixels left."""
    gain_map = scene.convert("L").resize((160, 120), Image.Resampling.BOX)
    return gain_map.crop((shift, 0, 160, 120)).resize((160, 120)) if shift else gain_map


LINED_UP = 1.6  # mean |Δ| of a map that lines up (≤ 1.2 measured); 4 map pixels off is ≥ 2.2


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(
    "spec",
    [
        "fit:400x400:jpeg:hdr",
        "square:200x200:cover:jpeg:hdr",
        "north:300x100:cover:north:jpeg:hdr",
        "southeast:150x150:cover:southeast:jpeg:hdr",
        "attention:200x200:cover:attention:jpeg:hdr",
        "entropy:100x300:cover:entropy:jpeg:hdr",
        "auto:250x250:cover:auto:jpeg:hdr",
        "wide:500x0:jpeg:hdr",
    ],
)
def test_the_gain_map_lines_up_with_its_picture_for_every_geometry(spec, orientation):
    scene = _slopes()
    data = _ultra_hdr(scene, _luminance_map(scene), orientation=orientation)
    variant = ImageProcessor(parse_variants(spec)).process_image(data).variants[0]
    assert variant.gain_map == {"type": "ultrahdr", "kept": True}
    assert _misfit(variant) < LINED_UP, (spec, orientation, _misfit(variant))


@pytest.mark.parametrize("spec", ["a:300x300:jpeg:hdr", "b:200x200:cover:attention:jpeg:hdr"])
def test_a_gain_map_a_few_pixels_off_would_be_caught(spec):
    """The check above is sharp: the same input with its map moved 4 of its pixels is out."""
    scene = _slopes()
    data = _ultra_hdr(scene, _luminance_map(scene, shift=4))
    variant = ImageProcessor(parse_variants(spec)).process_image(data).variants[0]
    assert _misfit(variant) > LINED_UP


def test_an_attention_crop_of_the_gain_map_follows_the_chosen_window():
    """`attention` picks the window holding the red patch at the right edge, not the centre: the
    gain map (here the picture's own luminance) must come from that window too."""
    scene = _slopes()
    data = _ultra_hdr(scene, _luminance_map(scene))
    processor = ImageProcessor(parse_variants("a:240x240:cover:attention:jpeg:hdr;c:240x240:cover:centre:jpeg:hdr"))
    attention, centre = processor.process_image(data).variants
    red = decode(_read(attention.data).primary).getpixel((235, 120))
    assert red[0] > 200 and red[1] < 60  # the window reaches the right edge
    assert _misfit(attention) < LINED_UP and _misfit(centre) < LINED_UP
    assert decode(_read(attention.data).gain_map).tobytes() != decode(_read(centre.data).gain_map).tobytes()


def test_variants_without_hdr_and_inputs_without_a_gain_map_are_byte_identical(hdr_input):
    mixed = [HDR[0], PLAIN[1], PLAIN[2]]
    assert [v.data for v in ImageProcessor(mixed).process_image(hdr_input).variants][1:] == [
        v.data for v in ImageProcessor(PLAIN).process_image(hdr_input).variants
    ][1:]
    plain_input = decode_to_jpeg(hdr_input)  # the same picture, no gain map
    hdr, plain = ImageProcessor(HDR).process_image(plain_input), ImageProcessor(PLAIN).process_image(plain_input)
    assert [v.data for v in hdr.variants] == [v.data for v in plain.variants]
    assert all(v.gain_map is None for v in hdr.variants) and hdr.source.gain_map is None


def test_an_apple_gain_map_without_its_headroom_is_not_carried_and_the_record_says_so():
    data = _gain_map_jpeg(None, APPLE_GAIN_MAP, size=(600, 800))  # no maker note: no headroom
    hdr, plain = ImageProcessor(HDR).process_image(data), ImageProcessor(PLAIN).process_image(data)
    assert [v.data for v in hdr.variants] == [v.data for v in plain.variants]
    assert [v.gain_map for v in hdr.variants] == [{"type": "apple", "kept": False}] * 2 + [None]


def test_a_gain_map_that_does_not_decode_leaves_the_variant_sdr():
    broken = _ultra_hdr(_scene(), _quadrants((160, 120)))
    start = broken.index(b"\xff\xd8\xff", 2)
    scan = broken.index(b"\xff\xda", start)
    broken = broken[:scan] + b"\xff\xda\x00\x02" + b"\x00" * (len(broken) - scan - 4)  # its scan is gone
    hdr, plain = ImageProcessor(HDR[:1]).process_image(broken), ImageProcessor(PLAIN[:1]).process_image(broken)
    assert hdr.variants[0].data == plain.variants[0].data
    assert hdr.variants[0].gain_map == {"type": "ultrahdr", "kept": False}


def test_an_ultra_hdr_output_is_an_ultra_hdr_input_again(hdr_input):
    once = ImageProcessor(HDR[:1]).process_image(hdr_input).variants[0]
    again = ImageProcessor([VariantConfig("small", 200, 200, format="jpeg", hdr=True)]).process_image(once.data)
    assert again.source.gain_map == "ultrahdr" and again.variants[0].gain_map == {"type": "ultrahdr", "kept": True}
    assert decode(_read(again.variants[0].data).gain_map).size == (50, 38)


def test_qauto_and_hdr_together():
    data = _ultra_hdr(_scene(), _quadrants((160, 120)))
    variant = ImageProcessor(parse_variants("q:400x400:jpeg:qauto:hdr")).process_image(data).variants[0]
    assert variant.qauto is not None and variant.gain_map["kept"]
    _read(variant.data)


def test_the_manifest_records_which_variants_kept_the_gain_map(hdr_input):
    processed = ImageProcessor(HDR).process_image(hdr_input)
    record = _record(processed)
    assert record["source"]["gain_map"] == {"type": "ultrahdr", "kept": True}
    assert [v.get("gain_map") for v in record["variants"]] == [{"type": "ultrahdr", "kept": True}] * 2 + [None]
    assert "gain_map" not in record["variants"][2]
    assert record["variants"][0]["bytes"] == len(processed.variants[0].data)


def test_hdr_is_parsed_validated_and_fingerprinted_only_when_set():
    (spec,) = parse_variants("large:1920x1920:jpeg:hdr")
    assert spec.hdr and spec.format.value == "jpeg"
    assert not parse_variants("large:1920x1920:jpeg")[0].hdr
    for bad in ("large:1920x1920:webp:hdr", "large:1920x1920:hdr", "large:1920x1920:avif:hdr", "a:10x10:png:hdr"):
        with pytest.raises(ValueError, match="hdr needs the jpeg format"):
            parse_variants(bad)
    plain, hdr = (ImageProcessor(parse_variants(s)) for s in ("large:1920x1920:jpeg", "large:1920x1920:jpeg:hdr"))
    assert "hdr" not in fingerprints.describe(plain)["variants"][0] and fingerprints.describe(hdr)["variants"][0]["hdr"]
    assert fingerprints.fingerprint(plain) != fingerprints.fingerprint(hdr)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprints.fingerprint(hdr))


def _apple_jpeg(gain_map: Image.Image, maker33: float, maker48: float) -> bytes:
    """An iPhone-style HDR JPEG: no hdrgm, no ISO; the gain map's XMP names Apple's auxiliary type,
    the primary's maker note holds the headroom."""
    gain_map.encoderinfo = {"xmp": APPLE_GAIN_MAP, "exif": b"", "extra": b""}
    buffer = io.BytesIO()
    exif = apple_exif(maker33, maker48)
    _scene().save(buffer, "MPO", save_all=True, append_images=[gain_map], quality=92, exif=exif)
    return buffer.getvalue()


def _rec709_linear(v: float) -> float:
    return v / 4.5 if v < 0.081 else ((v + 0.099) / 1.099) ** (1 / 0.45)


@pytest.mark.parametrize(
    ("maker33", "maker48", "stops"), [(1.02, 0.0064, 3.0 - 70 * 0.0064), (0.9, 0.5, 1.601 - 0.101 * 0.5)]
)
def test_an_apple_gain_map_becomes_an_ultra_hdr_one_with_the_same_boost(maker33, maker48, stops):
    """Apple: HDR = SDR × (1 + (headroom - 1) × g), g the map through Rec. 709; Ultra HDR with min 0,
    max log2(headroom), gamma 1, no offsets: HDR = SDR × 2^(max × r). So r = log2(1 + (h - 1) g) / max."""
    data = _apple_jpeg(_quadrants((160, 120)), maker33, maker48)
    processed = ImageProcessor(HDR).process_image(data)
    assert processed.source.gain_map == "apple"
    variant = processed.variants[0]
    assert variant.gain_map == {"type": "apple", "kept": True}
    container = _read(variant.data)
    values = _numbers(_hdrgm(container.gain_map_xmp))
    assert values["GainMapMax"] == pytest.approx(stops) and values["HDRCapacityMax"] == pytest.approx(stops)
    assert (values["GainMapMin"], values["Gamma"], values["OffsetSDR"], values["OffsetHDR"]) == (0, 1, 0, 0)
    assert _iso_values(container.gain_map_iso)["max"] == pytest.approx(stops, abs=1e-6)
    headroom = 2**stops
    for got, level in zip(_quadrant_levels(decode(container.gain_map)), LEVELS, strict=True):
        boost = 1 + (headroom - 1) * _rec709_linear(level / 255)  # what Apple's formula gives
        assert 2 ** (stops * got / 255) == pytest.approx(boost, rel=0.03), (level, got)


def test_apples_headroom_from_its_maker_note():
    assert uhdr.apple_headroom(apple_exif(1.02, 0.0064)) == pytest.approx(2**2.552)
    assert uhdr.apple_headroom(apple_exif(0.5, 0.005)) == pytest.approx(2**1.7)
    assert uhdr.apple_headroom(apple_exif(1.02, 8.0)) is None  # no boost left: nothing to carry
    plain = Image.Exif()
    plain[0x010F] = "Apple"
    assert uhdr.apple_headroom(plain.tobytes()) is None


def test_iso_21496_metadata_round_trips_through_our_encoder():
    single = uhdr.Metadata((-0.5,), (3.25,), (1.5,), (0.01,), (0.02,), 0.25, 3.25)
    assert uhdr.parse_iso(uhdr.encode_iso(single)) == single
    multi = uhdr.Metadata((0.0, 0.1, 0.2), (2.0, 2.5, 3.0), (1.0,), (1 / 64,), (1 / 64,), 0.0, 3.0)
    back = uhdr.parse_iso(uhdr.encode_iso(multi))
    assert (back.gain_map_min, back.gain_map_max, back.gamma) == (multi.gain_map_min, multi.gain_map_max, (1.0,) * 3)
    hdr_base = uhdr.Metadata((0.0,), (1.0,), (1.0,), (0.0,), (0.0,), 0.0, 1.0, base_rendition_is_hdr=True)
    assert uhdr.encode_iso(hdr_base) is None  # ISO would need the headrooms the other way round


def test_a_gain_map_larger_than_its_picture_is_refused_before_it_is_decoded():
    """A hostile 'gain map' declaring more pixels than the picture is never decoded: the variant
    is SDR, the record says the map was not kept."""
    data = _ultra_hdr(_scene((160, 120)), _quadrants((640, 480)))
    processed = ImageProcessor([VariantConfig("a", 100, 100, format="jpeg", hdr=True)]).process_image(data)
    plain = ImageProcessor([VariantConfig("a", 100, 100, format="jpeg")]).process_image(data)
    assert processed.variants[0].gain_map == {"type": "ultrahdr", "kept": False}
    assert processed.variants[0].data == plain.variants[0].data


RGB_GAIN_MAP_XMP = BOTH.format(
    attributes='xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/"',
    body="<hdrgm:Version>1.0</hdrgm:Version>"
    "<hdrgm:GainMapMin><rdf:Seq><rdf:li>0</rdf:li><rdf:li>0.1</rdf:li><rdf:li>0.2</rdf:li></rdf:Seq></hdrgm:GainMapMin>"
    "<hdrgm:GainMapMax><rdf:Seq><rdf:li>2</rdf:li><rdf:li>2.5</rdf:li><rdf:li>3</rdf:li></rdf:Seq></hdrgm:GainMapMax>"
    "<hdrgm:HDRCapacityMax>3</hdrgm:HDRCapacityMax>",
).encode()


def test_an_rgb_gain_map_with_per_channel_values_in_element_form():
    """Adobe's other spelling (elements, rdf:Seq per channel) and a three-channel map: kept as RGB
    (no chroma subsampling: its channels are gains), values per channel in the XMP and the ISO block."""
    gain_map = Image.merge("RGB", [_quadrants((160, 120))] * 3)
    data = _ultra_hdr(_scene(), gain_map, gain_map_xmp=RGB_GAIN_MAP_XMP)
    variant = ImageProcessor(HDR[:1]).process_image(data).variants[0]
    container = _read(variant.data)
    mine = Image.open(io.BytesIO(container.gain_map))
    assert mine.mode == "RGB" and [(h, v) for _, h, v, _ in mine.layer] == [(1, 1)] * 3  # 4:4:4
    seqs = {
        element.tag.split("}")[1]: [float(li.text) for li in element.findall("rdf:Seq/rdf:li", NS)]
        for element in _description(container.gain_map_xmp)
    }
    assert seqs == {"GainMapMin": [0, 0.1, 0.2], "GainMapMax": [2, 2.5, 3]}
    assert float(_hdrgm(container.gain_map_xmp)["HDRCapacityMax"]) == 3
    iso = container.gain_map_iso
    assert iso[4] & 0x80  # multi-channel
    assert struct.unpack_from(">iI", iso, 21 + 40 * 2 + 8) == (3_000_000, 1_000_000)  # blue's GainMapMax
