"""Test images made on the fly: every test builds exactly the input it needs (no corpus)."""

from __future__ import annotations

import io
import struct

from PIL import Image

from image_pipeline.processor.tonemap import matrix_profile

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int = 1200, height: int = 800, fmt: str = "JPEG", **options) -> bytes:
    """A smooth gradient with some structure: compresses like a photo."""
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB",
        (
            gradient,
            gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
            Image.new("L", (width, height), 120),
        ),
    )
    return encode(image, fmt, **options)


def solid(width: int, height: int, colour, fmt: str = "PNG", mode: str = "RGB", **options) -> bytes:
    return encode(Image.new(mode, (width, height), colour), fmt, **options)


def blurhash_average(hash_: str) -> tuple[int, int, int]:
    """The average colour a BlurHash encodes (its DC component, characters 2–5)."""
    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
    value = 0
    for c in hash_[2:6]:
        value = value * 83 + chars.index(c)
    return value >> 16, (value >> 8) & 255, value & 255


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def with_gps_exif(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.0), "E", (2.0, 17.0, 40.0)
    return exif.tobytes()


def apple_exif(maker33: float, maker48: float) -> bytes:
    """EXIF with Apple's maker note ("Apple iOS", version 1, big-endian, offsets from its own
    start) holding tags 33 and 48 as signed rationals: what an iPhone HDR gain map's headroom is
    computed from. One more tag comes first, as in a real note."""
    entries = [(0x0001, 9, 1, struct.pack(">i", 14)), (0x0021, 10, 1, maker33), (0x0030, 10, 1, maker48)]
    data_at = 16 + 12 * len(entries) + 4
    table, data = b"", b""
    for tag, kind, count, value in entries:
        if isinstance(value, bytes):
            table += struct.pack(">HHI", tag, kind, count) + value
        else:
            table += struct.pack(">HHII", tag, kind, count, data_at + len(data))
            data += struct.pack(">ii", round(value * 100000), 100000)
    note = b"Apple iOS\0\0\x01MM" + struct.pack(">H", len(entries)) + table + b"\0\0\0\0" + data
    exif = Image.Exif()
    exif[0x010F] = "Apple"
    exif.get_ifd(0x8769)[0x927C] = note
    return exif.tobytes()


def icc_profile(description: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC profile (primaries as D50-adapted XYZ colorants): the
    processor's own builder (it makes one for tone-mapped HDR10 HEICs)."""
    return matrix_profile(description, red, green, blue, gamma)


# Display P3 colorants, Bradford-adapted to D50 (as in Apple's Display P3 profile).
DISPLAY_P3 = icc_profile(
    "Display P3 (test)", (0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841)
)
