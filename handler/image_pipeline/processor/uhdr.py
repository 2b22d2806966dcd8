"""Ultra HDR JPEGs: the gain map an upload carries, and a variant that carries it on.

An Ultra HDR JPEG (Android's Ultra HDR image format v1; read by libultrahdr, libvips' `uhdrload`,
Chrome, Edge and Safari) is an ordinary SDR JPEG followed by a second, small JPEG: the gain map,
which tells an HDR screen how much brighter each area may be shown. Its numbers travel as Adobe's
`hdrgm` XMP, as ISO 21496-1 binary metadata, or both. A variant marked `hdr` is written in the
layout libultrahdr writes:

    primary   SOI, [JFIF APP0, Exif APP1: as the encoder wrote them]
              APP1 XMP  hdrgm:Version + Container:Directory (Primary; GainMap, Item:Length = its bytes)
              APP2 ISO 21496-1 version block
              APP2 MPF  index: the primary (offset 0) and the gain map (offset from the MPF header)
              ... the SDR picture, exactly as a plain JPEG variant encodes it ... EOI
    gain map  SOI, [JFIF APP0], APP1 XMP hdrgm values, APP2 ISO 21496-1 metadata,
              [the upload's gain-map ICC profile] ... the grey (or RGB) map ... EOI

An SDR decoder reads the first picture and stops at its EOI: the same pixels as the variant
without `hdr`. Both kinds of metadata are written, as libultrahdr 1.1-1.3 did, so that readers of
either find theirs: the upload's ISO 21496-1 block byte for byte (or, when it had only XMP, the
same numbers encoded as ISO 21496-1), and its hdrgm values as XMP (or its ISO ones, where XMP can
say them: an SDR base, the map applied in the base colour space). Only gain-map numbers are
written: nothing else of the upload's XMP.

Apple's own gain map (iPhone JPEGs: an MPF picture of auxiliary type
`urn:com:apple:photo:2020:aux:hdrgainmap`, headroom from the maker note's tags 33 and 48) is
converted, as Apple documents it ("Applying Apple HDR effect to your photos"): HDR = SDR × (1 +
(headroom - 1) × g), g the map read through the Rec. 709 transfer function. The same rendition in
Ultra HDR terms is HDR = SDR × 2^(r × log2 headroom) with r = log2(1 + (headroom - 1) × g) /
log2 headroom: a 256-entry table on the map's values, metadata min 0, max log2 headroom stops,
gamma 1, offsets 0.

Here: finding an upload's gain map (its MPF index), reading both kinds of metadata, and writing
the container. The pixels (decode, orient, crop, resize) are the pipeline's `_attach_gain_map`.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass

from PIL import Image

from .gainmap import APPLE_AUX, APPLE_XMP, mpf_entries, segments

XMP_NS = b"http://ns.adobe.com/xap/1.0/\0"
ISO_NS = b"urn:iso:std:iso:ts:21496:-1\0"
HDRGM = "http://ns.adobe.com/hdr-gain-map/1.0/"
MPF = b"MPF\0"
APP0, APP1, APP2 = 0xE0, 0xE1, 0xE2
_ISO_VERSION = b"\0\0\0\0"  # minimum and writer version 0: what a primary says when the map has ISO metadata
_MAX_PICTURES = 8  # pictures of an upload's MPF index looked at
_FIELDS = ("GainMapMin", "GainMapMax", "Gamma", "OffsetSDR", "OffsetHDR")  # per channel (1 or 3 values)


@dataclass(frozen=True)
class Metadata:
    """A gain map's numbers as `hdrgm` XMP spells them (ISO 21496-1 carries the same ones as
    fractions): boosts and headrooms in log2 stops, per channel where a tuple (1 or 3 values)."""

    gain_map_min: tuple[float, ...]
    gain_map_max: tuple[float, ...]
    gamma: tuple[float, ...]
    offset_sdr: tuple[float, ...]
    offset_hdr: tuple[float, ...]
    hdr_capacity_min: float
    hdr_capacity_max: float
    base_rendition_is_hdr: bool = False
    version: str = "1.0"


@dataclass(frozen=True)
class Source:
    """An upload's gain map as found: the picture's bytes and what describes it."""

    jpeg: bytes  # the gain map JPEG, as stored in the upload
    metadata: Metadata | None  # for the XMP: the upload's hdrgm values, or its ISO ones where they fit XMP
    iso: bytes | None  # the gain map's ISO 21496-1 metadata (after the namespace): the upload's, verbatim,
    # or its XMP values encoded; None where neither exists
    iso_version: bytes = _ISO_VERSION  # the primary's ISO 21496-1 block (after the namespace)
    table: tuple[int, ...] | None = None  # applied to the decoded map's values (Apple's map → Ultra HDR)


def find(data: bytes) -> Source | None:
    """The gain map of a JPEG: the first picture its MPF index lists after the primary whose
    header carries usable gain-map metadata (hdrgm XMP or ISO 21496-1), else Apple's gain map
    with the headroom its maker note gives. None when there is none (no MPF index, metadata that
    does not parse, an Apple map without its headroom). Headers only: nothing decoded."""
    mpf, iso_version, exif = None, _ISO_VERSION, None
    for marker, start, payload in segments(data, 0):
        if marker == APP2 and payload.startswith(MPF) and mpf is None:
            mpf = (start + len(MPF), payload[len(MPF) :])
        elif marker == APP2 and payload.startswith(ISO_NS):
            iso_version = payload[len(ISO_NS) :]
        elif marker == APP1 and payload.startswith(b"Exif\0\0") and exif is None:
            exif = payload
    if mpf is None:
        return None
    apple = None
    for _, size, offset in mpf_entries(*mpf)[1 : _MAX_PICTURES + 1]:
        if not offset or size < 4 or offset + size > len(data):
            continue
        picture = data[offset : offset + size]
        xmp = iso = None
        for marker, _, payload in segments(picture, 0):
            if marker == APP1 and payload.startswith(XMP_NS) and xmp is None:
                xmp = payload[len(XMP_NS) :]
            elif marker == APP2 and payload.startswith(ISO_NS) and iso is None:
                iso = payload[len(ISO_NS) :]
        from_xmp = parse_xmp(xmp) if xmp else None
        parsed_iso = parse_iso(iso) if iso else None
        if parsed_iso is None:
            iso = None
        if from_xmp is None and iso is None:
            if apple is None and xmp and (APPLE_AUX in xmp or APPLE_XMP in xmp):
                apple = picture
            continue
        metadata = from_xmp or (parsed_iso if isinstance(parsed_iso, Metadata) else None)
        return Source(picture, metadata, iso if iso is not None else encode_iso(metadata), iso_version)
    if apple is not None and exif is not None:
        headroom = apple_headroom(exif)
        if headroom is not None:
            metadata = Metadata((0.0,), (math.log2(headroom),), (1.0,), (0.0,), (0.0,), 0.0, math.log2(headroom))
            return Source(apple, metadata, encode_iso(metadata), iso_version, apple_table(headroom))
    return None


# -- metadata --------------------------------------------------------------------------------------


def parse_xmp(packet: bytes) -> Metadata | None:
    """The hdrgm values of an XMP packet (attributes or elements, one value or an rdf:Seq of three),
    with the format's defaults for the optional ones; None without GainMapMax and HDRCapacityMax
    (libultrahdr requires both) or with a value that is not a finite number."""
    text = packet.decode("utf-8", "replace")
    bound = re.search(r'xmlns:([A-Za-z_][\w.-]*)\s*=\s*["\']' + re.escape(HDRGM) + r'["\']', text)
    if bound is None:
        return None
    prefix = re.escape(bound.group(1))

    def values(name: str) -> list[str] | None:
        attribute = re.search(rf'\b{prefix}:{name}\s*=\s*["\']([^"\']*)["\']', text)
        if attribute:
            return [attribute.group(1)]
        element = re.search(rf"<{prefix}:{name}\b[^>]*>(.*?)</{prefix}:{name}\s*>", text, re.DOTALL)
        if element is None:
            return None
        items = re.findall(r"<rdf:li\b[^>]*>([^<]*)</rdf:li\s*>", element.group(1))
        return items or [element.group(1)]

    try:
        found = {name: values(name) for name in (*_FIELDS, "HDRCapacityMin", "HDRCapacityMax")}
        if found["GainMapMax"] is None or found["HDRCapacityMax"] is None:
            return None
        defaults = {"GainMapMin": ["0"], "Gamma": ["1"], "OffsetSDR": ["0.015625"], "OffsetHDR": ["0.015625"]}
        channels = {name: _numbers(found[name] or defaults.get(name)) for name in _FIELDS}
        base_hdr = (values("BaseRenditionIsHDR") or ["False"])[0].strip()
        version = (values("Version") or ["1.0"])[0].strip()
        metadata = Metadata(
            channels["GainMapMin"],
            channels["GainMapMax"],
            channels["Gamma"],
            channels["OffsetSDR"],
            channels["OffsetHDR"],
            _numbers(found["HDRCapacityMin"] or ["0"])[0],
            _numbers(found["HDRCapacityMax"])[0],
            base_hdr.lower() == "true",
            version if re.fullmatch(r"\d{1,3}\.\d{1,3}", version) else "1.0",
        )
    except ValueError:
        return None
    return metadata if all(g > 0 for g in metadata.gamma) else None


def _numbers(texts: list[str] | None) -> tuple[float, ...]:
    numbers = tuple(float(t) for t in texts or ())
    if len(numbers) not in (1, 3) or not all(math.isfinite(n) for n in numbers):
        raise ValueError("a gain-map value must be 1 or 3 finite numbers")
    return numbers


def parse_iso(payload: bytes) -> Metadata | bool | None:
    """ISO 21496-1 gain-map metadata (the bytes after the APP2 namespace): its values as `Metadata`
    where XMP can say the same (an SDR base, the map applied in the base colour space), True where
    it parses but XMP cannot, None where it does not parse (or is only a version block)."""
    try:
        minimum_version, _writer, flags = struct.unpack_from(">HHB", payload)
        if minimum_version != 0:
            return None
        channels = 3 if flags & 0x80 else 1
        use_base_colour_space, backward, common = bool(flags & 0x40), bool(flags & 0x04), bool(flags & 0x08)
        if common:
            denominator, base_n, alternate_n = struct.unpack_from(">III", payload, 5)
            base, alternate, pos = (base_n, denominator), (alternate_n, denominator), 17
            rows = [struct.unpack_from(">iiIii", payload, pos + 20 * c) for c in range(channels)]
            per_channel = [[(n, denominator) for n in row] for row in rows]
        else:
            base_n, base_d, alternate_n, alternate_d = struct.unpack_from(">IIII", payload, 5)
            base, alternate = (base_n, base_d), (alternate_n, alternate_d)
            rows = [struct.unpack_from(">iIiIIIiIiI", payload, 21 + 40 * c) for c in range(channels)]
            per_channel = [[row[k : k + 2] for k in range(0, 10, 2)] for row in rows]
        values = [[n / d for n, d in fractions] for fractions in per_channel]  # ZeroDivisionError: not parsed
        base_headroom, alternate_headroom = base[0] / base[1], alternate[0] / alternate[1]
    except (struct.error, ZeroDivisionError):
        return None
    if not use_base_colour_space or backward or base_headroom > alternate_headroom:
        return True
    minimum, maximum, gamma, offset_sdr, offset_hdr = (tuple(row[k] for row in values) for k in range(5))
    if not all(g > 0 for g in gamma):
        return None
    return Metadata(minimum, maximum, gamma, offset_sdr, offset_hdr, base_headroom, alternate_headroom)


def encode_iso(metadata: Metadata | None) -> bytes | None:
    """hdrgm values as ISO 21496-1 metadata (minimum and writer version 0, no common
    denominator, one or three channels, the base colour space), or None where ISO cannot say
    them (an HDR base, a negative base headroom) or there are none."""
    if metadata is None or metadata.base_rendition_is_hdr or metadata.hdr_capacity_min < 0:
        return None
    channels = (metadata.gain_map_min, metadata.gain_map_max, metadata.gamma, metadata.offset_sdr, metadata.offset_hdr)
    count = 3 if any(len(set(values)) > 1 for values in channels) else 1
    try:
        out = struct.pack(">HHB", 0, 0, 0x40 | (0x80 if count == 3 else 0))
        out += _fraction(metadata.hdr_capacity_min, "I") + _fraction(metadata.hdr_capacity_max, "I")
        for c in range(count):
            minimum, maximum, gamma, offset_sdr, offset_hdr = (v[c] if len(v) == 3 else v[0] for v in channels)
            out += _fraction(minimum, "i") + _fraction(maximum, "i") + _fraction(gamma, "I")
            out += _fraction(offset_sdr, "i") + _fraction(offset_hdr, "i")
    except struct.error:  # out of a 32-bit fraction's range
        return None
    return out


_DENOMINATOR = 1_000_000  # 6 decimals: finer than any renderer's float


def _fraction(value: float, kind: str) -> bytes:
    """One ISO 21496-1 fraction: a 32-bit numerator (`i` signed, `I` unsigned) over 10^6."""
    return struct.pack(">" + kind + "I", round(value * _DENOMINATOR), _DENOMINATOR)


def apple_headroom(exif: bytes) -> float | None:
    """The HDR headroom of an Apple gain map, from the maker note's tags 33 and 48 (Apple's
    published formula), or None without them (or with a headroom of one: nothing to carry)."""
    tags = _apple_maker_note(exif)
    if tags is None or 33 not in tags or 48 not in tags:
        return None
    maker33, maker48 = tags[33], tags[48]
    if maker33 < 1.0:
        stops = -20.0 * maker48 + 1.8 if maker48 <= 0.01 else -0.101 * maker48 + 1.601
    else:
        stops = -70.0 * maker48 + 3.0 if maker48 <= 0.01 else -0.303 * maker48 + 2.303
    return 2.0**stops if math.isfinite(stops) and stops > 0 else None


def _apple_maker_note(exif: bytes) -> dict[int, float] | None:
    """The numeric tags of an Apple maker note ("Apple iOS", its own byte order, offsets from its
    own start), read from an Exif APP1 payload with Pillow's reader; None without one."""
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        note = parsed.get_ifd(0x8769).get(0x927C)
    except (OSError, ValueError, SyntaxError, struct.error, KeyError, TypeError):
        return None
    if not isinstance(note, bytes) or not note.startswith(b"Apple iOS\0") or len(note) < 16:
        return None
    order = {b"MM": ">", b"II": "<"}.get(note[12:14])
    if order is None:
        return None
    tags: dict[int, float] = {}
    try:
        (count,) = struct.unpack_from(order + "H", note, 14)
        for i in range(min(count, 256)):
            tag, kind, _count, value = struct.unpack_from(order + "HHI4s", note, 16 + 12 * i)
            if kind in (5, 10):  # (signed) rational, stored at an offset from the note's start
                (at,) = struct.unpack(order + "I", value)
                numerator, denominator = struct.unpack_from(order + ("ii" if kind == 10 else "II"), note, at)
                if denominator:
                    tags[tag] = numerator / denominator
            elif kind == 11:  # float, in place
                (tags[tag],) = struct.unpack(order + "f", value)
            elif kind in (4, 9):  # (signed) long, in place
                (tags[tag],) = struct.unpack(order + ("i" if kind == 9 else "I"), value)
    except struct.error:
        return tags or None
    return tags


def apple_table(headroom: float) -> tuple[int, ...]:
    """Apple map value → Ultra HDR map value for the same boost (see the module doc)."""
    stops = math.log2(headroom)

    def rec709(v: float) -> float:  # the Rec. 709 transfer function, inverted: encoded → linear
        return v / 4.5 if v < 0.081 else ((v + 0.099) / 1.099) ** (1 / 0.45)

    return tuple(round(255 * math.log2(1 + (headroom - 1) * rec709(v / 255)) / stops) for v in range(256))


def _number(value: float) -> str:
    return repr(float(value))  # the shortest text that reads back as the same float


def _xmp(description: str, body: str = "") -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="s3-image-pipeline">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" {description}>{body}</rdf:Description>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()


def primary_xmp(version: str, gain_map_length: int) -> bytes:
    """The primary's XMP: hdrgm:Version and the GContainer directory (the gain map's length)."""
    return _xmp(
        f'xmlns:hdrgm="{HDRGM}" xmlns:Container="http://ns.google.com/photos/1.0/container/" '
        f'xmlns:Item="http://ns.google.com/photos/1.0/container/item/" hdrgm:Version="{version}"',
        "<Container:Directory><rdf:Seq>"
        '<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="Primary" Item:Mime="image/jpeg"/></rdf:li>'
        '<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="GainMap" Item:Mime="image/jpeg" '
        f'Item:Length="{gain_map_length}"/></rdf:li>'
        "</rdf:Seq></Container:Directory>",
    )


def gain_map_xmp(metadata: Metadata) -> bytes:
    """The gain map's XMP: every hdrgm value, as attributes (what libultrahdr's parser reads); a
    per-channel value as an rdf:Seq element (Adobe's form for RGB gain maps)."""
    attributes = [f'xmlns:hdrgm="{HDRGM}"', f'hdrgm:Version="{metadata.version}"']
    elements = []
    channels = (metadata.gain_map_min, metadata.gain_map_max, metadata.gamma, metadata.offset_sdr, metadata.offset_hdr)
    for name, values in zip(_FIELDS, channels, strict=True):
        if len(set(values)) == 1:
            attributes.append(f'hdrgm:{name}="{_number(values[0])}"')
        else:
            items = "".join(f"<rdf:li>{_number(v)}</rdf:li>" for v in values)
            elements.append(f"<hdrgm:{name}><rdf:Seq>{items}</rdf:Seq></hdrgm:{name}>")
    attributes += [
        f'hdrgm:HDRCapacityMin="{_number(metadata.hdr_capacity_min)}"',
        f'hdrgm:HDRCapacityMax="{_number(metadata.hdr_capacity_max)}"',
        f'hdrgm:BaseRenditionIsHDR="{"True" if metadata.base_rendition_is_hdr else "False"}"',
    ]
    return _xmp(" ".join(attributes), "".join(elements))


# -- container -------------------------------------------------------------------------------------


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > 65533:
        raise ValueError("a JPEG segment holds at most 65533 bytes")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _insertion_point(jpeg: bytes) -> int:
    """Where our segments go: after SOI and the JFIF / Exif segments the encoder put first."""
    at = 2
    for marker, start, payload in segments(jpeg, 0):
        if marker != APP0 and not (marker == APP1 and payload.startswith(b"Exif\0")):
            break
        at = start + len(payload)
    return at


def _with(jpeg: bytes, inserted: bytes) -> bytes:
    at = _insertion_point(jpeg)
    return jpeg[:at] + inserted + jpeg[at:]


_MPF_INDEX = 8 + 2 + 3 * 12 + 4  # TIFF header, tag count, 3 tags, next-IFD offset
_MPF_SEGMENT = 4 + len(MPF) + _MPF_INDEX + 2 * 16  # marker + length, "MPF\0", index, 2 MP entries


def _mpf(primary_size: int, gain_map_size: int, gain_map_offset: int) -> bytes:
    """An MPF index (CIPA DC-007, big-endian) for a primary at 0 and a gain map `gain_map_offset`
    bytes after the index's TIFF header, as libultrahdr writes it."""
    index = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 3)
    index += struct.pack(">HHI4s", 0xB000, 7, 4, b"0100")  # MPF version
    index += struct.pack(">HHII", 0xB001, 4, 1, 2)  # number of images
    index += struct.pack(">HHII", 0xB002, 7, 2 * 16, _MPF_INDEX)  # MP entries, right after the IFD
    index += struct.pack(">I", 0)  # no attribute IFD
    index += struct.pack(">IIIHH", 0x030000, primary_size, 0, 0, 0)  # baseline MP primary image, JPEG
    index += struct.pack(">IIIHH", 0, gain_map_size, gain_map_offset, 0, 0)
    return MPF + index


def assemble(primary: bytes, gain_map: bytes, source: Source) -> bytes:
    """One Ultra HDR JPEG from an encoded SDR variant and an encoded gain map (layout: module doc)."""
    map_segments = b""
    if source.metadata is not None:
        map_segments += _segment(APP1, XMP_NS + gain_map_xmp(source.metadata))
    if source.iso is not None:
        map_segments += _segment(APP2, ISO_NS + source.iso)
    gain_map = _with(gain_map, map_segments)
    head = b""
    if source.metadata is not None:
        head += _segment(APP1, XMP_NS + primary_xmp(source.metadata.version, len(gain_map)))
    if source.iso is not None:
        head += _segment(APP2, ISO_NS + source.iso_version)
    at = _insertion_point(primary)
    index_at = at + len(head) + 4 + len(MPF)  # the MPF TIFF header: offsets count from here
    primary_size = len(primary) + len(head) + _MPF_SEGMENT
    mpf = _segment(APP2, _mpf(primary_size, len(gain_map), primary_size - index_at))
    return primary[:at] + head + mpf + primary[at:] + gain_map


def open_map(
    source: Source, scale: float, picture: tuple[int, int]
) -> tuple[Image.Image, tuple[int, int], tuple[float, float]]:
    """The gain map decoded at the smallest JPEG DCT scale that keeps `scale` of its pixels (the
    largest `hdr` variant's scale with the draft headroom), its stored size, and the size its whole
    frame covers in the decoded pixels (Pillow rounds a scaled decode up to whole pixels). A map in
    another mode, or larger than its `picture` (both as stored), is refused before decoding."""
    image = Image.open(io.BytesIO(source.jpeg), formats=["JPEG"])
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"a gain map in mode {image.mode} is not carried (L or RGB)")
    stored = image.size
    if stored[0] > picture[0] or stored[1] > picture[1]:
        raise ValueError(f"a {stored[0]}×{stored[1]} gain map is larger than its {picture[0]}×{picture[1]} picture")
    extent = (float(image.width), float(image.height))
    if scale < 1.0:
        target = (math.ceil(image.width * scale), math.ceil(image.height * scale))
        drafted = image.draft(image.mode, target)
        if drafted is not None:
            extent = drafted[1][2:]
    image.load()
    return image, stored, extent


def encode_map(image: Image.Image, quality: int, icc_profile: bytes | None) -> bytes:
    """The gain map as a baseline JPEG: grey, or RGB without chroma subsampling (its channels are
    gains, not colours); the upload's gain-map ICC profile kept (ISO 21496-1 reads the alternate
    colour space from it), nothing else."""
    options = {"quality": quality, "optimize": False, "progressive": False, "exif": b"", "xmp": b""}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if image.mode == "RGB":
        options["subsampling"] = 0
    image.info = {}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()
