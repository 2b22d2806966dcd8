"""Hostile and awkward uploads, generated on the fly (nothing is downloaded or checked in).

`CASES` names each input with the outcome a user must see: either `"processed"` (correct
variants) or the stable error code the raw object gets tagged with.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from tests.images import encode, photo


@dataclass(frozen=True)
class Case:
    name: str  # also the raw key's file name
    data: bytes
    expected: str  # "processed" or an error code


def png_chunk(kind: bytes, body: bytes, *, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)


def raw_png(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    colour_type: int = 2,
    idat: bytes | None = None,
    ihdr_crc: int | None = None,
) -> bytes:
    """A PNG written byte by byte, so the header can say anything (bombs, zero sizes, 16-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    if idat is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
        row = b"\x00" + bytes(range(256)) * (width * channels * bit_depth // 8 // 256 + 1)
        row = row[: 1 + width * channels * bit_depth // 8]
        idat = zlib.compress(row * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr, crc=ihdr_crc)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes that declare width×height pixels (a decompression bomb)."""
    return raw_png(width, height, idat=zlib.compress(b"\x00" * 4096, 9))


def many_frames_gif(frames: int = 3000, size: int = 4) -> bytes:
    """An animated GIF with `frames` distinct frames (Pillow merges identical neighbours)."""
    images = [Image.new("P", (size, size), i % 256) for i in range(frames)]
    for image in images:
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=20, loop=0)


def jpeg_with_garbage_exif() -> bytes:
    """A JPEG whose APP1 Exif segment is noise after a valid-looking TIFF header."""
    body = photo(320, 240)
    garbage = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + b"\xff\x13\x37\x00" * 200
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    return body[:2] + segment + body[2:]


def jpeg_with_oversized_icc(size: int = 600_000) -> bytes:
    """A JPEG carrying a ~600 KB ICC 'profile' of noise, split over many APP2 segments."""
    noise = bytes((i * 131 + 7) % 256 for i in range(size))
    profile = struct.pack(">I", size) + noise[4:]
    return photo(320, 240, icc_profile=profile)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (300, 200), (0, 200, 200, 0)), "JPEG")


def sixteen_bit_grey_png() -> bytes:
    return encode(Image.linear_gradient("L").resize((256, 128)).convert("I;16"), "PNG")


def sixteen_bit_rgb_png() -> bytes:
    return raw_png(64, 48, bit_depth=16, colour_type=2)


def zero_width_jpeg() -> bytes:
    """A baseline JPEG whose SOF0 says 0 pixels wide."""
    data = photo(64, 64)
    sof = data.find(b"\xff\xc0")
    return data[: sof + 7] + b"\x00\x00" + data[sof + 9 :]


def zero_width_webp() -> bytes:
    """A lossy WebP whose VP8 frame header says 0 pixels wide."""
    data = photo(64, 64, "WEBP")
    start = data.find(b"\x9d\x01\x2a") + 3
    return data[:start] + b"\x00\x00" + data[start + 2 :]


def zero_screen_gif() -> bytes:
    """A GIF whose logical screen is 0 wide but whose one frame is 8×8: still a picture."""
    data = encode(Image.new("P", (8, 8), 3), "GIF")
    return data[:6] + struct.pack("<HH", 0, 8) + data[10:]


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
TEXT = b"hello, this is a plain text file pretending to be a photo\n" * 20


def good_cases() -> list[Case]:
    return [
        Case("good-photo.jpg", photo(640, 480), "processed"),
        Case("good-logo.png", photo(300, 300, "PNG"), "processed"),
        Case("good-pic.webp", photo(400, 300, "WEBP"), "processed"),
    ]


def bad_cases() -> list[Case]:
    """Every hostile input with the code it must be tagged with, or "processed" when a user
    would expect a picture (CMYK, 16-bit, noisy metadata are real photos, not attacks)."""
    return [
        Case("empty.jpg", b"", "empty_file"),
        Case("truncated.jpg", truncated(photo(640, 480)), "corrupt_image"),
        Case("truncated.png", truncated(photo(300, 300, "PNG")), "corrupt_image"),
        Case("truncated.webp", truncated(photo(400, 300, "WEBP")), "corrupt_image"),
        Case("header-only.jpg", photo(640, 480)[:200], "corrupt_image"),
        Case("text.jpg", TEXT, "unsupported_type"),
        Case("page.jpg", HTML, "unsupported_type"),
        Case("broken-crc.png", raw_png(32, 32, ihdr_crc=0xDEADBEEF), "corrupt_image"),
        Case("bomb.png", png_bomb(), "too_many_pixels"),  # over Pillow's own limit too
        Case("bomb-100mp.png", png_bomb(10_000, 10_000), "too_many_pixels"),  # only ours stops this one
        Case("frames.gif", many_frames_gif(), "too_many_frames"),
        Case("vector.svg", SVG, "unsupported_type"),
        Case("document.pdf", PDF, "unsupported_type"),
        Case("zero-width.png", raw_png(0, 32), "corrupt_image"),
        Case("zero-height.png", raw_png(32, 0), "corrupt_image"),
        Case("zero-width.jpg", zero_width_jpeg(), "corrupt_image"),
        Case("zero-width.webp", zero_width_webp(), "corrupt_image"),
        Case("zero-screen.gif", zero_screen_gif(), "processed"),
        Case("garbage-exif.jpg", jpeg_with_garbage_exif(), "processed"),
        Case("oversized-icc.jpg", jpeg_with_oversized_icc(), "processed"),
        Case("cmyk.jpg", cmyk_jpeg(), "processed"),
        Case("grey16.png", sixteen_bit_grey_png(), "processed"),
        Case("rgb16.png", sixteen_bit_rgb_png(), "processed"),
    ]
