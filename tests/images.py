"""Test images made on the fly: every test builds exactly the input it needs (no corpus)."""

from __future__ import annotations

import io
import struct

from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int = 1200, height: int = 800, fmt: str = "JPEG", **options) -> bytes:
    """A smooth gradient with some structure: compresses like a photo."""
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
                                Image.new("L", (width, height), 120)))
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


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def icc_profile(description: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC profile (primaries as D50-adapted XYZ colorants)."""
    desc = description.encode("ascii") + b"\0"
    tags = {
        b"desc": b"desc" + b"\0" * 4 + struct.pack(">I", len(desc)) + desc + b"\0" * (4 + 4 + 2 + 1 + 67),
        b"wtpt": b"XYZ " + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249),
        b"rXYZ": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in red),
        b"gXYZ": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in green),
        b"bXYZ": b"XYZ " + b"\0" * 4 + b"".join(_s15(v) for v in blue),
        b"rTRC": b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0",
        b"cprt": b"text" + b"\0" * 4 + b"none\0\0\0\0",
    }
    tags[b"gTRC"] = tags[b"bTRC"] = tags[b"rTRC"]
    table, data = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
    header += b"acsp" + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0)
    header += _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 4
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


# Display P3 colorants, Bradford-adapted to D50 (as in Apple's Display P3 profile).
DISPLAY_P3 = icc_profile(
    "Display P3 (test)", (0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841)
)
