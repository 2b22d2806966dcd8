"""WebP inputs: stills decoded by libwebp straight into the image's own buffer, the same pixels as
Pillow's decoder gives, animations still through Pillow, corrupt files typed, and the memory."""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

from image_pipeline import ImageFormat, ImageProcessor, VariantConfig
from image_pipeline.errors import CorruptImage
from image_pipeline.processor import webp
from tests.images import decode, encode

ROOT = Path(__file__).resolve().parents[2]
SPECS = [
    VariantConfig("full", 640, 640, format="png"),
    VariantConfig("half", 320, 320, format="png"),
    VariantConfig("w", 200, 200, format="webp", quality=95),
]


def _picture(width: int = 600, height: int = 400) -> Image.Image:
    """Colourful detail (edges, gradients, noise): what a decoder can get subtly wrong."""
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.effect_noise((width, height), 60),
            Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height)),
        ),
    )
    draw = ImageDraw.Draw(base)
    for i in range(0, width, 40):
        draw.line((i, 0, width - i, height), fill=(255 - i % 256, i % 256, 90), width=3)
    return base


def _alpha(size: tuple[int, int]) -> Image.Image:
    """Opaque on the left, fading to fully transparent on the right."""
    return Image.linear_gradient("L").rotate(-90).resize(size)


def _with_alpha_flag(lossless: bytes) -> bytes:
    """A plain VP8L file whose header says alpha is used (as some encoders write for opaque
    pixels): bit 28 of the 32 bits after the 0x2f signature byte."""
    assert lossless[12:16] == b"VP8L" and lossless[20] == 0x2F
    bits = struct.unpack("<I", lossless[21:25])[0] | (1 << 28)
    return lossless[:21] + struct.pack("<I", bits) + lossless[25:]


def _files() -> dict[str, bytes]:
    rgb = _picture()
    rgba = rgb.copy()
    rgba.putalpha(_alpha(rgb.size))
    opaque = rgb.convert("RGBA")
    return {
        "lossy": encode(rgb, "WEBP", quality=85),
        "lossy-alpha": encode(rgba, "WEBP", quality=85),
        "lossless": encode(rgb, "WEBP", lossless=True),
        "lossless-alpha": encode(rgba, "WEBP", lossless=True),
        "lossless-opaque-alpha": encode(opaque, "WEBP", lossless=True),
        "lossless-flagged-opaque-alpha": _with_alpha_flag(encode(opaque, "WEBP", lossless=True)),
    }


FILES = _files()
HAS_ALPHA = {"lossy-alpha", "lossless-alpha"}


def _pixels(variant) -> Image.Image:
    return decode(variant.data)


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel of what is seen over black, and of the alpha."""

    def seen(im: Image.Image) -> list[Image.Image]:
        rgba = im.convert("RGBA")
        return [
            Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), rgba).convert("RGB"),
            rgba.getchannel("A"),
        ]

    pairs = zip(seen(a), seen(b), strict=True)
    return max(max(ImageStat.Stat(ImageChops.difference(x, y)).mean) for x, y in pairs)


def test_the_library_pillow_loaded_is_found_on_this_install():
    """The fast path is really taken here (a silent fallback would hide a memory regression)."""
    lib = webp.library()
    assert lib is not None
    found = webp.features(FILES["lossy"])
    assert (found.width, found.height, found.has_alpha, found.has_animation) == (600, 400, 0, 0)
    assert webp.features(FILES["lossless-alpha"]).has_alpha == 1


@pytest.mark.parametrize("name", list(FILES))
def test_stills_come_out_as_pillows_own_decoder_gives_them(name):
    """Full size (no resize: the decoded pixels themselves), half size and a WebP thumbnail; real
    alpha kept, an opaque alpha (flagged or not) dropped."""
    data = FILES[name]
    reference = Image.open(io.BytesIO(data))
    reference.load()
    full, half, thumb = ImageProcessor(SPECS).process(data)
    assert (full.width, full.height) == (600, 400) and (half.width, half.height) == (320, 213)
    out = _pixels(full)
    if name in HAS_ALPHA:
        assert out.mode == "RGBA" and decode(thumb.data).mode == "RGBA"
        assert out.getpixel((5, 200))[3] >= 250 and out.getpixel((595, 200))[3] < 8
    else:
        assert out.mode == "RGB" and decode(thumb.data).mode == "RGB"
    assert _mean_difference(out, reference) < 0.5
    expected_half = reference.convert("RGBa" if name in HAS_ALPHA else "RGB").resize(
        (320, 213), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    assert _mean_difference(_pixels(half), expected_half) < 1.0
    assert thumb.format is ImageFormat.WEBP and (thumb.width, thumb.height) == (200, 133)


@pytest.mark.parametrize("name", list(FILES))
def test_without_the_library_pillows_decoder_gives_the_same_variants(name, monkeypatch):
    """As on an install where Pillow's libwebp cannot be found: Pillow's decoder does the work."""
    direct = ImageProcessor(SPECS).process(FILES[name])
    monkeypatch.setattr(webp, "_library_path", lambda: None)
    webp.library.cache_clear()
    try:
        fallback = ImageProcessor(SPECS).process(FILES[name])
        assert webp.library() is None
    finally:
        webp.library.cache_clear()  # the next lookup, unpatched, finds the library again
    for a, b in zip(direct, fallback, strict=True):
        assert (a.name, a.width, a.height) == (b.name, b.width, b.height)
        assert _pixels(a).mode == _pixels(b).mode
        assert _mean_difference(_pixels(a), _pixels(b)) == 0  # the same libwebp decodes both ways


def test_an_animated_webp_still_animates():
    frames = [Image.new("RGB", (200, 100), (i * 50, 0, 255 - i * 50)) for i in range(4)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=70, loop=0)
    assert webp.features(data).has_animation == 1
    (v,) = ImageProcessor([VariantConfig("w", 100, 100, format="webp")]).process(data)
    out = Image.open(io.BytesIO(v.data))
    assert out.n_frames == 4 and out.size == (100, 50)
    out.seek(3)
    assert out.convert("RGB").getpixel((50, 25))[0] > 120


def _garbled(data: bytes) -> bytes:
    """Headers intact (Pillow opens it), the bitstream overwritten: libwebp refuses to decode it."""
    chunk = max(data.find(b"VP8 "), data.find(b"VP8L"))  # the image chunk (after ALPH, if any)
    start = chunk + 8 + 10  # past the chunk header and the frame header
    return data[:start] + b"\xff" * (len(data) - start - 40) + data[-40:]


@pytest.mark.parametrize("name", ["lossy", "lossy-alpha", "lossless", "lossless-alpha"])
def test_a_corrupt_bitstream_is_a_typed_corrupt_image(name):
    data = _garbled(FILES[name])
    Image.open(io.BytesIO(data))  # the header still reads: the decode is what fails
    with pytest.raises(webp.Refused):
        webp.decode_still(data, webp.features(data))
    with pytest.raises(CorruptImage) as caught:
        ImageProcessor(SPECS).process(data)
    assert caught.value.code == "corrupt_image"


def test_a_truncated_webp_is_a_typed_corrupt_image():
    with pytest.raises(CorruptImage) as caught:
        ImageProcessor(SPECS).process(FILES["lossy"][: len(FILES["lossy"]) // 2])
    assert caught.value.code == "corrupt_image"


_PEAK_PROBE = """
import json, sys
from image_pipeline.processor import ImageProcessor, VariantConfig
from tests.images import photo

def peak_mb():  # this process's peak RSS
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024

box = int(sys.argv[2])
processor = ImageProcessor([VariantConfig("w", box, box, format="webp")])
processor.process(photo(64, 64, "WEBP"))  # warm up: imports, codecs, the library lookup
with open(sys.argv[1], "rb") as f:
    data = f.read()
before = peak_mb()
processor.process(data)
print(json.dumps(peak_mb() - before))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM")
@pytest.mark.parametrize("options", [{"quality": 80}, {"lossless": True, "method": 0}], ids=["lossy", "lossless"])
def test_a_large_still_costs_at_most_two_and_a_half_decoded_planes(tmp_path, options):
    """2048² is a 16 MB RGBA plane. Through Pillow's decoder (its canvas, the copy it returns,
    libwebp's own ARGB plane for lossless, the file held twice) the job grew by 50 MB (lossy) and
    60 MB (lossless); now a lossy file needs the image plus the resize's work (28 MB) and a
    lossless one libwebp's ARGB plane plus the image (32 MB)."""
    growth = _growth(tmp_path, options, 1024)  # 2048² is exactly 2× 1024: decoded whole
    assert growth < 2.5 * 16, growth


def _growth(tmp_path: Path, options: dict, box: int) -> float:
    """MB the job grows by for a 2048² WebP and one `box`² variant, in a fresh process."""
    path = tmp_path / "large.webp"
    path.write_bytes(encode(_picture(2048, 2048), "WEBP", **options))
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path), str(box)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": os.pathsep.join([str(ROOT / "handler"), str(ROOT)]), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- scaled on load: libwebp's advanced API decodes straight to the size the variants need ------------

SMALL = [
    VariantConfig("big", 400, 400, format="png"),
    VariantConfig("small", 150, 150, format="png", fit="cover", gravity="centre"),
    VariantConfig("w", 200, 200, format="webp", quality=95),
]
LARGE = {
    "lossy": encode(_picture(1600, 1200), "WEBP", quality=90),
    "lossless": encode(_picture(1600, 1200), "WEBP", lossless=True, method=0),
}
_rgba = _picture(1600, 1200)
_rgba.putalpha(_alpha((1600, 1200)))
LARGE["lossless-alpha"] = encode(_rgba, "WEBP", lossless=True, method=0)
LARGE["lossy-alpha"] = encode(_rgba, "WEBP", quality=90)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB of what is seen over black (RGB), the worst band."""

    def seen(im: Image.Image) -> Image.Image:
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA")).convert("RGB")

    rms = max(ImageStat.Stat(ImageChops.difference(seen(a), seen(b))).rms)
    return 99.0 if rms == 0 else 20 * math.log10(255 / rms)


def _reference(data: bytes, size: tuple[int, int], cover: bool = False) -> Image.Image:
    """Pillow's full decode, then one Lanczos resize (premultiplied when there is alpha)."""
    full = decode(data)
    work = full.convert("RGBa") if full.mode == "RGBA" else full.convert("RGB")
    if cover:
        return ImageOps.fit(work, size, Image.Resampling.LANCZOS).convert("RGBA")
    return work.resize(size, Image.Resampling.LANCZOS).convert("RGBA")


def test_the_decoder_config_has_decode_hs_layout():
    """WebPDecoderConfig as decode.h lays it out (ABI 0x02xx): 40 + 120 + 76 bytes, 8-aligned."""
    assert ctypes.sizeof(webp._Config) == (240 if ctypes.sizeof(ctypes.c_void_p) == 8 else 212)
    assert webp._Config.options.offset == ctypes.sizeof(webp._Features) + ctypes.sizeof(webp._DecBuffer)
    assert webp.library().WebPGetDecoderVersion() >> 16 == 1  # libwebp 1.x: ABI major 0x02
    assert webp._config((10, 10)) is not None  # the library accepts our ABI version


@pytest.mark.parametrize("name", list(LARGE))
def test_a_large_still_is_decoded_at_the_size_the_variants_need(name, monkeypatch):
    """A 400 px variant of a 1600×1200 file: decoded at 800×600 (RESCALE_HEADROOM = 2), except a
    lossy file with alpha (libwebp would rescale its colour without weighting by alpha)."""
    sizes = []
    real = webp.decode_still

    def spy(*args):
        pixels = real(*args)
        sizes.append(pixels.size)
        return pixels

    monkeypatch.setattr(webp, "decode_still", spy)
    big, small, thumb = ImageProcessor(SMALL).process(LARGE[name])
    assert sizes == [(1600, 1200) if name == "lossy-alpha" else (800, 600)]
    assert (big.width, big.height, small.width, small.height, thumb.width, thumb.height) == (
        400,
        300,
        150,
        150,
        200,
        150,
    )
    assert _pixels(big).mode == ("RGBA" if "alpha" in name else "RGB")


@pytest.mark.parametrize("name", ["lossy", "lossless"])
def test_a_lossless_still_is_scaled_only_where_that_saves_time(name, monkeypatch):
    """A 640 px variant of 1600×1200 wants 1280×960, 64 % of the pixels: a lossy file is decoded
    at that size, a lossless one whole (its rescaler would cost more than the Lanczos saves)."""
    sizes = []
    real = webp.decode_still
    monkeypatch.setattr(webp, "decode_still", lambda *args: sizes.append(real(*args).size) or real(*args))
    (v,) = ImageProcessor([VariantConfig("w", 640, 640, format="png")]).process(LARGE[name])
    assert sizes[0] == ((1280, 960) if name == "lossy" else (1600, 1200))
    assert (v.width, v.height) == (640, 480)


@pytest.mark.parametrize("name", list(LARGE))
def test_scaled_variants_match_pillows_full_decode_and_resize(name):
    """The pixels (PNG out, no codec loss) against a full decode + one Lanczos resize: as close
    as a JPEG of the same picture drafted at ½ gets (34 / 38 dB on this noise and these hard
    lines; a photo scores far higher), so the WebP headroom costs what the JPEG one does."""
    data = LARGE[name]
    jpeg = encode(_picture(1600, 1200), "JPEG", quality=95)
    big, small, _ = ImageProcessor(SMALL).process(data)
    jpeg_big, jpeg_small, _ = ImageProcessor(SMALL).process(jpeg)
    floor_big = _psnr(_pixels(jpeg_big), _reference(jpeg, (400, 300))) - 0.5
    floor_small = _psnr(_pixels(jpeg_small), _reference(jpeg, (150, 150), cover=True)) - 0.5
    assert min(floor_big, floor_small) > 33
    assert _psnr(_pixels(big), _reference(data, (400, 300))) > floor_big
    assert _psnr(_pixels(small), _reference(data, (150, 150), cover=True)) > floor_small
    if "alpha" in name:  # transparency where it was
        assert _pixels(big).getpixel((3, 150))[3] >= 250 and _pixels(big).getpixel((397, 150))[3] < 8


@pytest.mark.parametrize("name", ["lossy", "lossless"])
def test_orientation_after_a_scaled_decode(name):
    """EXIF orientation 6 (rotate 90° clockwise to view): the frame is turned after the scaled
    decode, and the variant matches the upright full decode."""
    exif = Image.Exif()
    exif[0x0112] = 6
    options = {"quality": 90} if name == "lossy" else {"lossless": True, "method": 0}
    data = encode(_picture(1600, 1200), "WEBP", exif=exif.tobytes(), **options)
    big, small, _ = ImageProcessor(SMALL).process(data)
    assert (big.width, big.height, small.width, small.height) == (300, 400, 150, 150)
    upright = ImageOps.exif_transpose(decode(data)).convert("RGB")
    # As close as unrotated (34 dB on this noise, see above); a frame turned wrong scores ~10 dB.
    assert _psnr(_pixels(big), upright.resize((300, 400), Image.Resampling.LANCZOS)) > 33


def test_without_the_advanced_api_the_still_is_decoded_at_full_size(monkeypatch):
    """As with a libwebp that lacks `WebPDecode`: the simple API decodes the whole still."""
    data = LARGE["lossy"]
    monkeypatch.setattr(webp, "_advanced", lambda: None)
    found = webp.features(data)
    assert not webp.can_scale(found) and webp.decode_still(data, found, (800, 600)).size == (1600, 1200)
    big, _, _ = ImageProcessor(SMALL).process(data)
    assert (big.width, big.height) == (400, 300)
    assert _psnr(_pixels(big), _reference(data, (400, 300))) > 45  # today's full-decode path


def test_a_refused_configuration_falls_back_to_full_size(monkeypatch):
    """A libwebp whose WebPInitDecoderConfig refuses our ABI version: decoded at full size."""
    _init, decode_, free = webp._advanced()
    monkeypatch.setattr(webp, "_advanced", lambda: (lambda config, version: 0, decode_, free))
    data = LARGE["lossless"]
    assert webp.decode_still(data, webp.features(data), (800, 600)).size == (1600, 1200)
    big, _, _ = ImageProcessor(SMALL).process(data)
    assert (big.width, big.height) == (400, 300)


@pytest.mark.parametrize("name", ["lossy", "lossless", "lossless-alpha"])
def test_a_corrupt_bitstream_scaled_on_load_is_a_typed_corrupt_image(name):
    data = _garbled(LARGE[name])
    with pytest.raises(webp.Refused):
        webp.decode_still(data, webp.features(data), (800, 600))
    with pytest.raises(CorruptImage) as caught:
        ImageProcessor(SMALL).process(data)
    assert caught.value.code == "corrupt_image"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM")
@pytest.mark.parametrize("options", [{"quality": 80}, {"lossless": True, "method": 0}], ids=["lossy", "lossless"])
def test_a_still_scaled_on_load_costs_less_than_its_full_plane(tmp_path, options):
    """2048² for a 256 px variant is decoded at 512² (1 MB): a lossy file grows the job by ~4 MB
    (28 MB decoded whole), a lossless one by libwebp's own full ARGB plane (16 MB: the bitstream
    refers back anywhere) and ~7 MB more (32 MB decoded whole)."""
    growth = _growth(tmp_path, options, 256)
    assert growth < (8 if "quality" in options else 26), growth
