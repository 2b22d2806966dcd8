"""A still WebP decoded straight into a buffer the image then owns: libwebp's simple API.

Pillow decodes WebP only through libwebp's animation decoder (`_webp.WebPAnimDecoder`): for a
still it keeps its own copy of the file and two full canvases, and returns the frame as a copy
in a bytes object. For a 4096² file that was ~255 MB peak for the whole job. libwebp's simple
API, `WebPDecodeRGBAInto`, writes the pixels into a buffer we allocate; `Image.frombuffer`
makes that buffer the image without a copy. What is left is the codec's own need (a lossless
bitstream is decoded into a full ARGB plane first; a lossy one needs only a few rows).

The library is the one Pillow's `_webp` module already loaded (its path read from
/proc/self/maps: the wheel's `pillow.libs/libwebp-<hash>.so.7`, or a system libwebp), called
through ctypes: no new dependency, and the same libwebp Pillow would have used (1.6.0 in
Pillow 13's wheels; the simple API has been stable since 0.1, the features struct since 0.5). Found
once, on the first WebP (`library()`); when it cannot be found, a symbol is missing or libwebp
refuses the file, `decode_still` returns None and the caller takes Pillow's path.

Always 4 bytes per pixel: Pillow maps RGBA and RGBX buffers, but an RGB buffer would be
copied into a 4-byte-per-pixel image. A file without alpha is read as RGBX (libwebp writes
255 in the fourth byte); one whose alpha turns out to be 255 everywhere too, so nothing later
premultiplies or encodes an alpha plane that carries nothing. Alpha is straight, not
premultiplied: the pipeline premultiplies once itself.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

from PIL import Image

# decode.h: only the major byte has to match the library's (WEBP_ABI_IS_INCOMPATIBLE), 0x02 in
# every libwebp 1.x, whose WebPBitstreamFeatures has the layout below (1.6, in Pillow 13's wheels,
# accepts it: tests/unit/test_processor_webp.py reads headers through it).
_DECODER_ABI_VERSION = 0x0209
_VP8_STATUS_OK = 0


class _Features(ctypes.Structure):
    """decode.h's WebPBitstreamFeatures."""

    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("has_alpha", ctypes.c_int),
        ("has_animation", ctypes.c_int),
        ("format", ctypes.c_int),  # 0 mixed/undefined, 1 lossy, 2 lossless
        ("pad", ctypes.c_uint32 * 5),
    ]


def _library_path() -> str | None:
    """The libwebp that Pillow's `_webp` module loaded, from this process's memory map; else
    `_webp` itself (no /proc, or libwebp linked in statically): a symbol looked up through a
    library's handle is searched in the libraries it needs too."""
    try:
        from PIL import _webp  # loads libwebp into the process
    except ImportError:
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:  # address perms offset dev inode [path]
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) == 6 else ""
                name = path.rsplit("/", 1)[-1]
                # libwebp.so.7 or pillow.libs/libwebp-51b0b3f7.so.7.2.0, not libwebpdemux/libwebpmux
                if name.startswith(("libwebp.so", "libwebp-")) and ".so" in name:
                    return path
    except OSError:
        pass
    return getattr(_webp, "__file__", None)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """libwebp with the two functions used here typed, or None (then Pillow's path is taken)."""
    path = _library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        features = lib.WebPGetFeaturesInternal
        decode = lib.WebPDecodeRGBAInto
    except (OSError, AttributeError):
        return None
    features.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Features), ctypes.c_int]
    features.restype = ctypes.c_int
    decode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    decode.restype = ctypes.c_void_p
    return lib


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed() -> None:
    """Give memory just freed back to the system before the decode allocates its planes.

    Pillow's open holds the file twice for a moment (a concatenated copy, then libwebp's own);
    freeing the first raises glibc's mmap threshold to the file's size, so the second comes from
    the heap and, once freed with Pillow's decoder, stays resident (20 MB for a 20 MB file).
    `malloc_trim` returns such free heap pages (about 1 ms for those 20 MB)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Refused(Exception):
    """libwebp's simple API could not decode a file it had accepted the header of."""


def features(data: bytes) -> _Features | None:
    """The bitstream's header facts, or None when libwebp is not reachable or rejects the header."""
    lib = library()
    if lib is None or not isinstance(data, bytes):
        return None
    found = _Features()
    if lib.WebPGetFeaturesInternal(data, len(data), ctypes.byref(found), _DECODER_ABI_VERSION) != _VP8_STATUS_OK:
        return None
    return found


def decode_still(data: bytes, found: _Features) -> Image.Image:
    """The still's pixels as RGBA (real alpha) or RGBX, in a buffer the image owns.

    `found` comes from `features(data)`. Raises `Refused` when libwebp returns NULL (a corrupt
    or truncated bitstream): the caller lets Pillow's decoder give its verdict."""
    width, height = found.width, found.height
    stride = width * 4
    buffer = bytearray(stride * height)
    target = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    try:
        done = library().WebPDecodeRGBAInto(data, len(data), ctypes.addressof(target), len(buffer), stride)
    finally:
        del target  # releases the export, so the buffer can be handed over
    if not done:
        raise Refused("libwebp could not decode the bitstream")
    mode = "RGBA" if found.has_alpha else "RGBX"
    pixels = Image.frombuffer(mode, (width, height), buffer, "raw", mode, 0, 1)
    if mode == "RGBA" and pixels.getextrema()[3][0] == 255:
        # Opaque everywhere: the same buffer read as RGBX (no copy, nothing to premultiply).
        pixels = Image.frombuffer("RGBX", (width, height), buffer, "raw", "RGBX", 0, 1)
    return pixels
