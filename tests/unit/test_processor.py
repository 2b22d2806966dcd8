"""The processor as a user sees it: sizes, formats, colours, orientation, metadata, errors."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image, ImageCms, ImageDraw, ImageOps

from image_pipeline import ImageFormat, ImageProcessor, VariantConfig
from image_pipeline.errors import CorruptImage, EmptyFile, TooLarge, TooManyFrames, TooManyPixels, UnsupportedType
from image_pipeline.processor import Gravity, Limits
from tests.images import (
    BLUE,
    DISPLAY_P3,
    GREEN,
    RED,
    blurhash_average,
    decode,
    encode,
    photo,
    solid,
    with_gps_exif,
)


def near(actual, expected, tolerance=6):
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def only(spec: VariantConfig, **kwargs) -> ImageProcessor:
    return ImageProcessor([spec], **kwargs)


# -- defaults and sizes -------------------------------------------------------------------------


def test_default_variants_fit_their_boxes_and_keep_aspect():
    variants = ImageProcessor().process(photo(4000, 3000))
    assert [(v.name, v.width, v.height) for v in variants] == [
        ("thumbnail", 150, 112),
        ("medium", 800, 600),
        ("large", 1920, 1440),
    ]
    for v in variants:
        assert decode(v.data).size == (v.width, v.height)
        assert v.format is ImageFormat.JPEG and v.content_type == "image/jpeg"  # format=None keeps JPEG


def test_small_images_are_never_upscaled():
    variants = ImageProcessor().process(photo(100, 80))
    assert {(v.width, v.height) for v in variants} == {(100, 80)}


def test_cover_crops_to_the_exact_box():
    spec = VariantConfig("square", 150, 150, fit="cover", format="webp")
    (v,) = only(spec).process(photo(1000, 500))
    assert (v.width, v.height) == (150, 150) and decode(v.data).size == (150, 150)


def test_cover_does_not_upscale_a_small_source():
    (v,) = only(VariantConfig("square", 300, 300, fit="cover")).process(photo(200, 120))
    assert (v.width, v.height) == (200, 120)


@pytest.mark.parametrize("gravity", ["west", "entropy", "attention", "auto"])
def test_cover_gravity_keeps_the_interesting_side(gravity):
    image = Image.new("RGB", (900, 300), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for x in range(0, 300, 6):  # a busy, saturated pattern on the left third only
        draw.line((x, 0, x, 300), fill=RED if x % 12 else BLUE, width=3)
    (v,) = only(VariantConfig("sq", 300, 300, fit="cover", gravity=gravity, format="png")).process(encode(image, "PNG"))
    pixels = decode(v.data).convert("RGB")
    assert pixels.getpixel((150, 150)) != (128, 128, 128)


def test_auto_gravity_is_the_default_for_cover():
    assert VariantConfig("sq", 300, 300, fit="cover").gravity is Gravity.AUTO
    assert VariantConfig("box", 300, 300).gravity is Gravity.CENTRE  # contain: nothing is cropped
    assert VariantConfig("sq", 300, 300, fit="cover", gravity="centre").gravity is Gravity.CENTRE
    # A symmetric picture without faces: the subject (attention centroid) is its middle.
    image = Image.new("RGB", (900, 300), RED)
    image.paste(GREEN, (300, 0, 600, 300))
    (v,) = only(VariantConfig("sq", 300, 300, fit="cover", format="png")).process(encode(image, "PNG"))
    assert near(decode(v.data).convert("RGB").getpixel((150, 150)), GREEN)


# -- orientation --------------------------------------------------------------------------------

# How to store an image so that EXIF orientation N displays it upright (inverse of exif_transpose).
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_before_resizing(orientation):
    upright = Image.new("RGB", (600, 400), BLUE)
    upright.paste(RED, (0, 0, 150, 100))  # red marks the top-left corner
    stored = upright if _STORE[orientation] is None else upright.transpose(_STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    (v,) = only(VariantConfig("m", 300, 300, format="png")).process(data)
    out = decode(v.data).convert("RGB")
    assert out.size == (300, 200)
    assert near(out.getpixel((10, 10)), RED, 40)
    assert near(out.getpixel((290, 190)), BLUE, 40)
    assert 0x0112 not in out.getexif()


# -- colour -------------------------------------------------------------------------------------


def test_display_p3_is_converted_to_srgb():
    # P3 (200, 100, 50) is sRGB ≈ (216, 93, 24): computed with the P3→sRGB matrix, gamma 2.2 in.
    data = encode(Image.new("RGB", (64, 64), (200, 100, 50)), "PNG", icc_profile=DISPLAY_P3)
    for fmt in ("png", "jpeg", "webp"):
        (v,) = only(VariantConfig("m", 32, 32, format=fmt, quality=95)).process(data)
        out = decode(v.data)
        assert near(out.convert("RGB").getpixel((16, 16)), (216, 93, 24), 4), fmt
        assert not out.info.get("icc_profile"), f"{fmt} output should be untagged sRGB"


def test_icc_profile_is_kept_when_asked():
    data = encode(Image.new("RGB", (64, 64), (200, 100, 50)), "PNG", icc_profile=DISPLAY_P3)
    (v,) = only(VariantConfig("m", 32, 32, format="jpeg"), keep_icc_profile=True).process(data)
    out = decode(v.data)
    assert out.info.get("icc_profile") == DISPLAY_P3
    assert near(out.getpixel((16, 16)), (200, 100, 50), 4)


def test_cmyk_jpeg_comes_out_as_rgb():
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)
    (v,) = only(VariantConfig("m", 32, 32, format="webp", quality=95)).process(data)
    out = decode(v.data)
    assert out.mode == "RGB" and near(out.getpixel((16, 16)), RED, 8)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    data = encode(Image.new("I;16", (64, 64), 32768), "PNG")
    (v,) = only(VariantConfig("m", 32, 32, format="png")).process(data)
    assert abs(decode(v.data).convert("L").getpixel((16, 16)) - 128) <= 1


@pytest.mark.parametrize("mode,colour", [("P", 3), ("LA", (90, 255)), ("L", 90), ("1", 1)])
def test_palette_grey_and_bilevel_inputs_are_handled(mode, colour):
    data = solid(64, 64, colour, "PNG", mode=mode)
    (v,) = only(VariantConfig("m", 32, 32, format="jpeg")).process(data)
    assert decode(v.data).size == (32, 32)


def test_transparency_is_flattened_on_the_background_for_jpeg_only():
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    data = encode(image, "PNG")
    background = (0, 128, 255)
    processor = ImageProcessor(
        [VariantConfig("j", 32, 32, format="jpeg"), VariantConfig("w", 32, 32, format="webp")],
        background_color=background,
    )
    jpeg, webp = processor.process(data)
    assert near(decode(jpeg.data).getpixel((16, 16)), background, 4)
    assert decode(webp.data).mode == "RGBA" and decode(webp.data).getpixel((16, 16))[3] == 0


# -- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "gif"])
def test_gps_and_all_exif_are_stripped_from_every_output(fmt):
    image = Image.open(io.BytesIO(photo(800, 600)))
    data = encode(
        image,
        "JPEG",
        exif=with_gps_exif(image),
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )
    assert decode(data).getexif().get_ifd(0x8825)  # the input really has GPS
    (v,) = only(VariantConfig("m", 400, 400, format=fmt)).process(data)
    out = decode(v.data)
    assert not out.getexif().get_ifd(0x8825)
    assert 0x010F not in out.getexif()
    assert b"GPS" not in v.data and b"TestCam" not in v.data


def test_metadata_is_kept_when_stripping_is_off_but_orientation_is_reset():
    image = Image.open(io.BytesIO(photo(400, 300)))
    exif = Image.Exif()
    exif.load(with_gps_exif(image))
    exif[0x0112] = 6
    data = encode(image, "JPEG", exif=exif.tobytes())
    (v,) = only(VariantConfig("m", 200, 200, format="jpeg"), strip_metadata=False).process(data)
    assert decode(v.data).size == (150, 200)  # still rotated upright
    out_exif = decode(v.data).getexif()
    assert out_exif.get(0x010F) == "TestCam" and out_exif.get(0x0112) == 1


# -- formats and animation ----------------------------------------------------------------------


@pytest.mark.parametrize("source_fmt", ["JPEG", "PNG", "WEBP", "GIF", "AVIF", "TIFF", "BMP", "HEIF"])
def test_every_input_format_round_trips_into_every_output_format(source_fmt):
    if source_fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    data = photo(320, 240, source_fmt)
    specs = [VariantConfig(f.value, 160, 160, format=f) for f in ImageFormat]
    for v in ImageProcessor(specs).process(data):
        out = decode(v.data)
        assert out.format == v.format.pillow_name and out.size == (160, 120)


def test_format_none_keeps_web_formats_and_turns_others_into_jpeg():
    spec = VariantConfig("m", 100, 100)
    assert only(spec).process(photo(200, 200, "WEBP"))[0].format is ImageFormat.WEBP
    assert only(spec).process(photo(200, 200, "PNG"))[0].format is ImageFormat.PNG
    assert only(spec).process(photo(200, 200, "TIFF"))[0].format is ImageFormat.JPEG


def _animation(frames: int, fmt: str = "GIF") -> bytes:
    images = [Image.new("RGB", (200, 100), (i * 40 % 256, 0, 255 - i * 40 % 256)) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=80, loop=0)


@pytest.mark.parametrize("source_fmt", ["GIF", "WEBP"])
def test_animations_stay_animated_with_every_frame_resized(source_fmt):
    data = _animation(5, source_fmt)
    processor = ImageProcessor(
        [
            VariantConfig("g", 100, 100, format="gif"),
            VariantConfig("w", 100, 100, format="webp"),
            VariantConfig("j", 100, 100, format="jpeg"),
        ]
    )
    gif, webp, jpeg = processor.process(data)
    for v in (gif, webp):
        out = Image.open(io.BytesIO(v.data))
        assert out.n_frames == 5 and out.size == (100, 50)
        out.seek(4)
        assert out.size == (100, 50)
    assert getattr(decode(jpeg.data), "n_frames", 1) == 1


# -- rejections ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", EmptyFile),
        (b"hello, this is not an image\n" * 10, UnsupportedType),
        (b"<!DOCTYPE html><html><body>hi</body></html>", UnsupportedType),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', UnsupportedType),
        (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", UnsupportedType),
        (photo(400, 300)[:600], CorruptImage),
        (photo(400, 300, "PNG")[:300], CorruptImage),
        (photo(400, 300, "WEBP")[:200], CorruptImage),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, CorruptImage),
    ],
    ids=["empty", "text", "html", "svg", "pdf", "truncated-jpeg", "truncated-png", "truncated-webp", "jpeg-header"],
)
def test_bad_input_raises_a_typed_error_with_a_stable_code(data, error):
    with pytest.raises(error) as caught:
        ImageProcessor().process(data)
    assert caught.value.code == error.code


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(TooManyPixels) as caught:
        ImageProcessor().process(_png_declaring(50000, 50000))
    assert caught.value.code == "too_many_pixels"


def test_pixel_limit_is_configurable():
    with pytest.raises(TooManyPixels):
        ImageProcessor(limits=Limits(max_pixels=1000)).process(photo(100, 100))


def test_byte_limit():
    with pytest.raises(TooLarge):
        ImageProcessor(limits=Limits(max_bytes=100)).process(photo(100, 100))


def test_type_not_in_the_allowed_list_is_rejected():
    with pytest.raises(UnsupportedType):
        ImageProcessor(limits=Limits(allowed_types={"jpeg"})).process(photo(100, 100, "PNG"))


def test_too_many_frames():
    with pytest.raises(TooManyFrames):
        ImageProcessor([VariantConfig("g", 50, 50, format="gif")], limits=Limits(max_frames=3)).process(_animation(5))


# -- manifest extras ----------------------------------------------------------------------------


def test_blurhash_and_dominant_colour_describe_the_image():
    image = Image.new("RGB", (300, 200), (30, 120, 200))
    image.paste((250, 250, 250), (0, 0, 60, 40))
    result = ImageProcessor().process_image(encode(image, "PNG"))
    assert len(result.blurhash) == 6 + 2 * (4 * 3 - 1) and result.blurhash[0] == "L"  # 4×3 components
    assert near(blurhash_average(result.blurhash), (63, 128, 202), 6)  # linear-light mean
    assert result.dominant_color == "#1e78c8"
    assert (result.source.width, result.source.height, result.source.type) == (300, 200, "png")


def test_preserve_original_appends_the_untouched_upload():
    data = photo(300, 200)
    variants = ImageProcessor(preserve_original=True).process(data)
    assert variants[-1].name == "original" and variants[-1].data == data


def test_large_jpeg_is_decoded_with_draft_but_keeps_exact_sizes_and_quality():
    data = photo(6000, 3400, quality=90)
    variants = ImageProcessor().process(data)
    assert [(v.width, v.height) for v in variants] == [(150, 85), (800, 453), (1920, 1088)]
    reference = decode(data).resize((800, 453), Image.Resampling.LANCZOS)
    got = decode(variants[1].data)
    diff = [abs(a - b) for a, b in zip(reference.getpixel((400, 226)), got.getpixel((400, 226)), strict=True)]
    assert max(diff) <= 6
    assert math.isclose(variants[2].width / variants[2].height, 6000 / 3400, rel_tol=0.01)


def test_specs_are_validated_where_they_are_written():
    with pytest.raises(ValueError, match="quality"):
        VariantConfig("x", 10, 10, quality=0)
    with pytest.raises(ValueError, match="format"):
        VariantConfig("x", 10, 10, format="bmp")
    with pytest.raises(ValueError, match="fit"):
        VariantConfig("x", 10, 10, fit="stretch")
    with pytest.raises(ValueError, match="name"):
        VariantConfig("Bad Name", 10, 10)


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    from PIL import ImageChops, ImageStat

    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def _detailed(width: int, height: int) -> Image.Image:
    """Fine texture: any sub-pixel shift or stretch shows up as a large difference."""
    return Image.effect_mandelbrot((width, height), (-2.2, -1.2, 1.0, 1.2), 200).convert("RGB")


def test_cover_matches_an_exact_centre_crop():
    source = _detailed(1601, 899)
    spec = VariantConfig("sq", 150, 150, fit="cover", gravity="centre", format="png")
    (v,) = only(spec).process(encode(source, "PNG"))
    reference = ImageOps.fit(source, (150, 150), Image.Resampling.LANCZOS)
    assert _mean_difference(decode(v.data), reference) < 1.0


def test_draft_decode_of_an_odd_sized_jpeg_is_not_stretched():
    source = _detailed(3017, 1697)
    data = encode(source, "JPEG", quality=95, subsampling=0)
    (v,) = only(VariantConfig("m", 1000, 1000, format="png")).process(data)
    reference = decode(data).resize((v.width, v.height), Image.Resampling.LANCZOS)
    assert _mean_difference(decode(v.data), reference) < 0.2  # 0.29 when the draft box is ignored


def test_an_alpha_channel_that_is_opaque_everywhere_is_dropped():
    data = encode(Image.new("RGBA", (64, 64), (10, 200, 30, 255)), "PNG")
    (v,) = only(VariantConfig("w", 32, 32, format="webp")).process(data)
    assert decode(v.data).mode == "RGB" and near(decode(v.data).getpixel((16, 16)), (10, 200, 30), 4)


@pytest.mark.parametrize("source_fmt", ["GIF", "JPEG", "PNG"])
def test_comments_and_text_chunks_never_reach_an_output(source_fmt):
    from PIL.PngImagePlugin import PngInfo

    secret = "owner: alice, 48.8582 N 2.2945 E"
    image = Image.new("RGB", (200, 100), (200, 0, 0))
    if source_fmt == "PNG":
        text = PngInfo()
        text.add_text("Comment", secret)
        data = encode(image, "PNG", pnginfo=text)
    else:
        data = encode(image, source_fmt, comment=secret.encode())
    assert secret.encode() in data
    for fmt in ImageFormat:
        (v,) = only(VariantConfig("m", 100, 100, format=fmt)).process(data)
        assert secret.encode() not in v.data, fmt


def test_a_phone_mpo_is_one_upright_picture_not_an_animation():
    upright = Image.new("RGB", (600, 400), BLUE)
    upright.paste(RED, (0, 0, 150, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    second = Image.new("RGB", (600, 400), GREEN)  # the depth map / second camera picture
    data = encode(
        upright.transpose(Image.Transpose.ROTATE_90),
        "MPO",
        save_all=True,
        append_images=[second.transpose(Image.Transpose.ROTATE_90)],
        exif=exif.tobytes(),
    )
    assert Image.open(io.BytesIO(data)).n_frames == 2
    for v in only(VariantConfig("w", 300, 300, format="webp", quality=95)).process(data):
        out = Image.open(io.BytesIO(v.data))
        assert getattr(out, "n_frames", 1) == 1 and out.size == (300, 200)
        assert near(out.convert("RGB").getpixel((10, 10)), RED, 40)


def test_a_multi_page_tiff_gives_its_first_page():
    pages = [Image.new("RGB", (400, 300), (250, 250, 250)), Image.new("RGB", (100, 50), (0, 0, 0))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    (v,) = only(VariantConfig("w", 200, 200, format="webp")).process(data)
    out = Image.open(io.BytesIO(v.data))
    assert getattr(out, "n_frames", 1) == 1 and near(out.convert("RGB").getpixel((100, 75)), (250, 250, 250))


def test_animation_frames_are_colour_converted_like_stills():
    frames = [Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (200, 100, 50))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], icc_profile=DISPLAY_P3, lossless=True)
    (v,) = only(VariantConfig("w", 32, 32, format="webp", quality=100)).process(data)
    out = Image.open(io.BytesIO(v.data))
    assert out.n_frames == 2
    out.seek(1)
    assert near(out.convert("RGB").getpixel((16, 16)), (216, 93, 24), 6)  # P3 (200, 100, 50) in sRGB


def test_a_non_rgb_profile_is_never_embedded_in_rgb_outputs():
    cmyk_header = DISPLAY_P3[:16] + b"CMYK" + DISPLAY_P3[20:]
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", icc_profile=cmyk_header)
    for fmt in ("jpeg", "webp", "png"):
        (v,) = only(VariantConfig("m", 32, 32, format=fmt), keep_icc_profile=True).process(data)
        out = decode(v.data)
        assert out.mode == "RGB" and not out.info.get("icc_profile"), fmt


@pytest.mark.parametrize("loop,expected_gif,expected_webp", [(None, None, 1), (0, 0, 0), (3, 3, 3)])
def test_animation_loop_count_is_kept(loop, expected_gif, expected_webp):
    frames = [Image.new("RGB", (40, 40), c) for c in (RED, GREEN, BLUE)]
    options = {} if loop is None else {"loop": loop}
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, **options)
    gif, webp = ImageProcessor(
        [VariantConfig("g", 20, 20, format="gif"), VariantConfig("w", 20, 20, format="webp")]
    ).process(data)
    assert Image.open(io.BytesIO(gif.data)).info.get("loop") == expected_gif
    assert Image.open(io.BytesIO(webp.data)).info.get("loop") == expected_webp


def test_float_tiff_is_scaled_not_blacked_out():
    data = encode(Image.new("F", (64, 64), 0.5), "TIFF")
    (v,) = only(VariantConfig("m", 32, 32, format="png")).process(data)
    assert abs(decode(v.data).convert("L").getpixel((16, 16)) - 128) <= 1


def test_bigtiff_is_recognised():
    from image_pipeline.processor import sniff

    assert sniff(b"II+\x00\x08\x00\x00\x00" + b"\0" * 32) == "tiff"
    assert sniff(b"MM\x00+\x00\x08\x00\x00" + b"\0" * 32) == "tiff"
