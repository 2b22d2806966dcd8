"""Does the upload carry an HDR gain map? Read from headers only, never decoded.

A gain-map photo is an ordinary SDR picture plus a second, small grey picture that tells an HDR
screen how much brighter each area may be shown. The variants are made from the SDR picture; the
gain map is not carried over (the manifest says so). What is recognised:

    ultrahdr  Android Ultra HDR / Adobe: XMP in the `hdrgm` namespace (a JPEG's gain map is the
              second image of its MPF index)
    iso21496  ISO 21496-1 gain-map metadata (a JPEG APP2 segment `urn:iso:std:iso:ts:21496:-1`)
    apple     Apple's HDR gain map: a JPEG's MPF image or a HEIC's auxiliary image of type
              `urn:com:apple:photo:2020:aux:hdrgainmap` (XMP `HDRGainMap` / `apdi`)

Cost: a JPEG's header segments are walked (the primary's, then those of the few other pictures its
MPF index lists, each a handful of bytes); a HEIC's come with the open. No pixel is decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from PIL import Image

ULTRAHDR = "ultrahdr"
ISO21496 = "iso21496"
APPLE = "apple"
_ORDER = (ULTRAHDR, APPLE, ISO21496)  # a file with several kinds of metadata is named by the first

_HDRGM = b"http://ns.adobe.com/hdr-gain-map/1.0/"
_ISO = b"urn:iso:std:iso:ts:21496:-1"
APPLE_AUX = b"urn:com:apple:photo:2020:aux:hdrgainmap"
APPLE_XMP = b"http://ns.apple.com/HDRGainMap/1.0/"
_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_MPF = b"MPF\0"
_APP1, _APP2, _SOS, _EOI = 0xE1, 0xE2, 0xDA, 0xD9
_MAX_SEGMENTS = 64  # header segments read per picture
_MAX_PICTURES = 8  # other pictures of an MPF index looked at


def detect(image: Image.Image, data: bytes, kind: str) -> str | None:
    """ "ultrahdr", "iso21496", "apple", or None when the upload has no gain map."""
    if kind == "jpeg":
        return _in_jpeg(data)
    found = _in_xmp(image.info.get("xmp"))
    aux_types = image.info.get("aux") or {}  # pillow-heif: {auxiliary image type: [ids]}
    if isinstance(aux_types, dict) and any(APPLE_AUX.decode() in str(t) for t in aux_types):
        found.add(APPLE)
    return _first(found)


def _in_jpeg(data: bytes) -> str | None:
    found: set[str] = set()
    mpf = None
    for marker, start, payload in segments(data, 0):
        found |= _in_segment(marker, payload)
        if marker == _APP2 and payload.startswith(_MPF):
            mpf = (start + len(_MPF), payload[len(_MPF) :])
    if not found and mpf is not None:
        for _, _, offset in mpf_entries(*mpf)[1 : _MAX_PICTURES + 1]:
            for marker, _, payload in segments(data, offset) if offset else ():
                found |= _in_segment(marker, payload)
    return _first(found)


def _first(found: set[str]) -> str | None:
    return next((name for name in _ORDER if name in found), None)


def _in_segment(marker: int, payload: bytes) -> set[str]:
    if marker == _APP1 and payload.startswith(_XMP):
        return _in_xmp(payload)
    if marker == _APP2 and payload.startswith(_ISO):
        return {ISO21496}
    return set()


def _in_xmp(xmp: bytes | str | None) -> set[str]:
    if not xmp or not isinstance(xmp, (bytes, bytearray, str)):
        return set()
    packet = xmp.encode("utf-8", "replace") if isinstance(xmp, str) else bytes(xmp)
    found = set()
    if _HDRGM in packet:
        found.add(ULTRAHDR)
    if APPLE_XMP in packet or APPLE_AUX in packet:
        found.add(APPLE)
    return found


def segments(data: bytes, start: int) -> Iterator[tuple[int, int, bytes]]:
    """(marker, payload offset, payload) of the JPEG header segments from the SOI at `start` up to
    the first scan; stops quietly at anything malformed."""
    if data[start : start + 2] != b"\xff\xd8":
        return
    pos = start + 2
    for _ in range(_MAX_SEGMENTS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (_SOS, _EOI):
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            return
        yield marker, pos + 4, data[pos + 4 : pos + 2 + length]
        pos += 2 + length


def mpf_entries(base: int, tiff: bytes) -> list[tuple[int, int, int]]:
    """(attribute, size, file offset) of every picture an MPF index (CIPA DC-007) lists, the
    primary first. `base` is where its TIFF header lies in the file: the other pictures' offsets
    count from it (the primary's is 0, the file's start). [] for anything malformed."""
    if tiff[:4] == b"II*\0":
        order = "<"
    elif tiff[:4] == b"MM\0*":
        order = ">"
    else:
        return []
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for i in range(min(count, 32)):
            tag, _type, length, value = struct.unpack(order + "HHII", tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
            if tag == 0xB002:  # MP Entry: 16 bytes per picture
                entries = tiff[value : value + length]
                listed = [struct.unpack(order + "III", entries[j : j + 12]) for j in range(0, len(entries) - 15, 16)]
                return [(attribute, size, base + offset if offset else 0) for attribute, size, offset in listed]
    except struct.error:
        return []
    return []
