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

Scaled on load (`decode_still(..., size=)`): libwebp's advanced API (`WebPDecode` with
`options.use_scaling`) decodes straight to a smaller size, as JPEG's DCT scaling does, the way
libvips reads WebP for a thumbnail. Its rescaler averages the area each output pixel covers (in
premultiplied ARGB for lossless files), a box filter softer than DCT scaling: the pipeline asks
for 2× the largest variant (`geometry.RESCALE_HEADROOM`), which costs the SSIM a ½ JPEG draft
costs on the same photo. A lossy file with alpha is not scaled: libwebp rescales its colour
planes without weighting by alpha, so colour hidden under transparent pixels would bleed into
the edges; a lossless one only where that saves time (`worth_scaling`). Where the advanced API
is missing or refuses the configuration, the still is decoded at full size by the simple API.
The advanced API also lets a lossy decode filter and convert rows in a second thread
(`use_threads`, the same pixels): less wall time where a second CPU is free.

Always 4 bytes per pixel: Pillow maps RGBA and RGBX buffers, but an RGB buffer would be
copied into a 4-byte-per-pixel image. A file without alpha is read as RGBX (libwebp writes
255 in the fourth byte); one whose alpha turns out to be 255 everywhere too, so nothing later
premultiplies or encodes an alpha plane that carries nothing. Alpha is straight, not
premultiplied: the pipeline premultiplies once itself.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import lru_cache
from typing import cast

from PIL import Image

# decode.h: only the major byte has to match the library's (WEBP_ABI_IS_INCOMPATIBLE), 0x02 in
# every libwebp 1.x, whose WebPBitstreamFeatures and WebPDecoderConfig have the layouts below
# (1.6, in Pillow 13's wheels, reports decoder version 0x010600 and ABI 0x0210 and accepts them:
# tests/unit/test_processor_webp.py decodes through both).
_DECODER_ABI_VERSION = 0x0209
_VP8_STATUS_OK = 0
_MODE_RGBA = 1  # WEBP_CSP_MODE: straight (not premultiplied) R, G, B, A bytes
LOSSLESS_MAX_AREA = 0.5  # a lossless still is scaled on load only to at most half its pixels


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


class _RGBABuffer(ctypes.Structure):
    """decode.h's WebPRGBABuffer."""

    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVABuffer(ctypes.Structure):
    """decode.h's WebPYUVABuffer (unused here; it sizes the union)."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("y", "u", "v", "a")),
        *((name, ctypes.c_int) for name in ("y_stride", "u_stride", "v_stride", "a_stride")),
        *((name, ctypes.c_size_t) for name in ("y_size", "u_size", "v_size", "a_size")),
    ]


class _BufferUnion(ctypes.Union):
    _fields_ = [("RGBA", _RGBABuffer), ("YUVA", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    """decode.h's WebPDecBuffer."""

    _fields_ = [
        ("colorspace", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("is_external_memory", ctypes.c_int),
        ("u", _BufferUnion),
        ("pad", ctypes.c_uint32 * 4),
        ("private_memory", ctypes.c_void_p),
    ]


class _Options(ctypes.Structure):
    """decode.h's WebPDecoderOptions."""

    _fields_ = [
        *(
            (name, ctypes.c_int)
            for name in (
                "bypass_filtering",
                "no_fancy_upsampling",
                "use_cropping",
                "crop_left",
                "crop_top",
                "crop_width",
                "crop_height",
                "use_scaling",
                "scaled_width",
                "scaled_height",
                "use_threads",
                "dithering_strength",
                "flip",
                "alpha_dithering_strength",
            )
        ),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _Config(ctypes.Structure):
    """decode.h's WebPDecoderConfig (240 bytes on 64-bit platforms)."""

    _fields_ = [("input", _Features), ("output", _DecBuffer), ("options", _Options)]


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
def _advanced() -> tuple[Callable[..., int], Callable[..., int], Callable[..., None]] | None:
    """The advanced API's three functions (init, decode, free), typed, or None without them."""
    lib = library()
    if lib is None:
        return None
    try:
        init, decode, free = lib.WebPInitDecoderConfigInternal, lib.WebPDecode, lib.WebPFreeDecBuffer
    except AttributeError:
        return None
    init.argtypes = [ctypes.POINTER(_Config), ctypes.c_int]
    init.restype = ctypes.c_int
    decode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Config)]
    decode.restype = ctypes.c_int
    free.argtypes = [ctypes.POINTER(_DecBuffer)]
    free.restype = None
    return init, decode, free


def can_scale(found: _Features) -> bool:
    """Whether `decode_still` can scale this still while decoding: the advanced API is there,
    and the file is lossless or has no alpha (see the module's docstring)."""
    return _advanced() is not None and not found.has_animation and (found.format == 2 or not found.has_alpha)


def worth_scaling(found: _Features, size: tuple[int, int]) -> bool:
    """Whether decoding at `size` saves time. A lossy bitstream's rescaler replaces the
    upsampling and colour conversion of the full size, so any smaller size does; a lossless one
    is decoded whole anyway (its ARGB plane), and the rescaler (premultiply, average, divide:
    ~6 ns per source pixel) pays for itself only where the Lanczos after it gets at most
    LOSSLESS_MAX_AREA of the pixels (measured: 4096² → 3840² costs 19 % more CPU time,
    5640×3172 → 3840×2160 saves 9 %)."""
    area = size[0] * size[1] / (found.width * found.height)
    return area < 1 and (found.format != 2 or area <= LOSSLESS_MAX_AREA)


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


def decode_still(data: bytes, found: _Features, size: tuple[int, int] | None = None) -> Image.Image:
    """The still's pixels as RGBA (real alpha) or RGBX, in a buffer the image owns; at `size`
    (scaled while decoding) when given, `can_scale(found)` and `worth_scaling`, else at full size.

    Through the advanced API where it is there (a lossy bitstream then filters and converts its
    rows in a second thread while the first parses, `options.use_threads`: the same pixels),
    else the simple one. `found` comes from `features(data)`. Raises `Refused` when libwebp
    cannot decode it (a corrupt or truncated bitstream): the caller lets Pillow's decoder give
    its verdict."""
    full = (found.width, found.height)
    wanted = size if size is not None and can_scale(found) and worth_scaling(found, size) else None
    config = _config(wanted)
    width, height = wanted if wanted is not None and config is not None else full
    stride = width * 4
    buffer = bytearray(stride * height)
    target = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    lib = library()
    try:
        if config is not None:
            done = _decode_advanced(data, config, ctypes.addressof(target), len(buffer), stride)
        elif lib is not None:
            done = lib.WebPDecodeRGBAInto(data, len(data), ctypes.addressof(target), len(buffer), stride)
        else:  # `found` came from `features`, which needs the library: not reached
            done = False
    finally:
        del target  # releases the export, so the buffer can be handed over
    if not done:
        raise Refused("libwebp could not decode the bitstream")
    mode = "RGBA" if found.has_alpha else "RGBX"
    pixels = Image.frombuffer(mode, (width, height), buffer, "raw", mode, 0, 1)
    if mode == "RGBA" and cast(tuple[tuple[int, int], ...], pixels.getextrema())[3][0] == 255:  # one pair a band
        # Opaque everywhere: the same buffer read as RGBX (no copy, nothing to premultiply).
        pixels = Image.frombuffer("RGBX", (width, height), buffer, "raw", "RGBX", 0, 1)
    return pixels


def _config(size: tuple[int, int] | None) -> _Config | None:
    """A decoder configuration (straight RGBA out, threads on; scaled to `size` if given), or
    None without the advanced API or when the library refuses our ABI version."""
    functions = _advanced()
    if functions is None:
        return None
    config = _Config()
    if not functions[0](ctypes.byref(config), _DECODER_ABI_VERSION):
        return None
    if size is not None:
        config.options.use_scaling = 1
        config.options.scaled_width, config.options.scaled_height = size
    config.options.use_threads = 1
    config.output.colorspace = _MODE_RGBA
    config.output.is_external_memory = 1
    return config


def _decode_advanced(data: bytes, config: _Config, address: int, length: int, stride: int) -> bool:
    """`WebPDecode` into our buffer at `address` (`length` bytes, rows `stride` apart)."""
    functions = _advanced()
    assert functions is not None, "a configuration comes from the advanced API"
    _, decode, free = functions
    config.output.u.RGBA.rgba = address
    config.output.u.RGBA.stride = stride
    config.output.u.RGBA.size = length
    try:
        return decode(data, len(data), ctypes.byref(config)) == _VP8_STATUS_OK
    finally:
        free(ctypes.byref(config.output))  # frees nothing of ours: the memory is external
