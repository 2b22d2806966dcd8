"""Placeholders describe the whole picture, and width-only / height-only variants."""

from __future__ import annotations

import pytest
from PIL import Image

from image_pipeline import ImageProcessor, VariantConfig
from image_pipeline.processor import Fit
from image_pipeline.settings import parse_variants
from tests.images import GREEN, RED, blurhash_average, decode, encode, photo


def _red_sides_green_middle() -> bytes:
    """Two thirds red, a green middle third: a centre square crop shows only green."""
    image = Image.new("RGB", (900, 300), RED)
    image.paste(GREEN, (300, 0, 600, 300))
    return encode(image, "PNG")


@pytest.mark.parametrize(
    "variants",
    [
        "thumbnail:150x150:cover:webp;medium:800x800:webp;large:1920x1920:jpeg",  # the Lambda's default
        "thumbnail:150x150:cover:webp",  # only a crop: nothing full-frame to borrow from
        "thumbnail:100x100:cover:attention:png;medium:400x400:png",
    ],
)
def test_placeholder_describes_the_full_frame_not_the_square_crop(variants):
    result = ImageProcessor(parse_variants(variants)).process_image(_red_sides_green_middle())
    assert result.dominant_color == "#ff0000"  # the crop alone is green
    r, g, b = blurhash_average(result.blurhash)
    assert r > 150 and g > 100 and b < 10  # the mean of red, red, green in linear light
    assert result.blurhash[0] == "L"  # still 4×3 components


# -- width-only / height-only -------------------------------------------------------------------


def test_width_only_variant_follows_the_aspect_ratio():
    (hero,) = ImageProcessor(parse_variants("hero:1600x0:webp")).process(photo(4000, 3000))
    assert (hero.width, hero.height) == (1600, 1200)
    assert decode(hero.data).size == (1600, 1200)


def test_height_only_variant_follows_the_aspect_ratio():
    (tall,) = ImageProcessor(parse_variants("tall:0x1200")).process(photo(3000, 4000))
    assert (tall.width, tall.height) == (900, 1200)
    assert decode(tall.data).size == (900, 1200)


def test_one_sided_variants_never_upscale():
    hero, tall = ImageProcessor(parse_variants("hero:1600x0;tall:0x1200")).process(photo(640, 480))
    assert (hero.width, hero.height) == (tall.width, tall.height) == (640, 480)


def test_one_sided_cover_has_nothing_to_crop():
    (v,) = ImageProcessor(parse_variants("hero:500x0:cover:attention")).process(photo(1000, 400))
    assert (v.width, v.height) == (500, 200)
    assert VariantConfig("hero", 500, 0, fit="cover").fit is Fit.CONTAIN


@pytest.mark.parametrize("size", ["1600x", "1600x0"])
def test_width_only_spellings(size):
    (spec,) = parse_variants(f"hero:{size}")
    assert (spec.max_width, spec.max_height) == (1600, 0)


def test_at_least_one_side_is_required():
    with pytest.raises(ValueError, match="at least one"):
        parse_variants("none:0x0")
    with pytest.raises(ValueError, match="at least one"):
        VariantConfig("none", 0, 0)
    with pytest.raises(ValueError, match="max_width"):
        VariantConfig("neg", -5, 100)


# -- decoding paths -----------------------------------------------------------------------------


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    from PIL import ImageChops, ImageStat

    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGBA"), b.convert("RGBA"))).mean) / 4


def _detailed(width: int, height: int) -> Image.Image:
    return Image.effect_mandelbrot((width, height), (-2.2, -1.2, 1.0, 1.2), 200).convert("RGB")


@pytest.mark.parametrize("options", [{"quality": 90}, {"lossless": True}], ids=["lossy", "lossless"])
@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
def test_a_webp_still_gives_the_same_pixels_as_pillows_own_decode(options, alpha):
    source = _detailed(1203, 797)
    if alpha:
        source.putalpha(Image.linear_gradient("L").resize(source.size))
    data = encode(source, "WEBP", **options)
    (v,) = ImageProcessor([VariantConfig("m", 600, 600, format="png")]).process(data)
    reference = decode(data).resize((v.width, v.height), Image.Resampling.LANCZOS)
    assert (v.width, v.height) == (600, 398)
    assert _mean_difference(decode(v.data), reference) < 0.5


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_large_reduce_keeps_the_exact_frame(fmt):
    """Non-JPEG sources far above the variants are box-reduced first; no stretch or shift."""
    source = _detailed(4001, 2251)
    data = encode(source, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    (v,) = ImageProcessor([VariantConfig("s", 300, 300, format="png")]).process(data)
    reference = source.resize((v.width, v.height), Image.Resampling.LANCZOS)
    assert (v.width, v.height) == (300, 169)
    assert _mean_difference(decode(v.data), reference) < 1.0


def test_invisible_pixels_never_bleed_into_visible_edges():
    """Transparent pixels carry black RGB; a resize that ignores alpha darkens the red edge."""
    source = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    source.paste((255, 0, 0, 255), (0, 0, 200, 400))
    (v,) = ImageProcessor([VariantConfig("s", 30, 30, format="png")]).process(encode(source, "PNG"))
    out = decode(v.data).convert("RGBA")
    r, g, b, a = out.getpixel((15, 15))  # the edge pixel: half covered
    assert 0 < a < 255 and r >= 250 and g == b == 0


# -- focal point ---------------------------------------------------------------------------------


def _subject_at(x0: int, y0: int, size=(1200, 800)) -> Image.Image:
    """A busy, saturated subject (stripes) on a flat grey background."""
    from PIL import ImageDraw

    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for x in range(x0, x0 + 200, 8):
        draw.line((x, y0, x, y0 + 200), fill=RED if x % 16 else (0, 0, 255), width=4)
    return image


def test_focal_point_is_where_the_subject_is():
    result = ImageProcessor().process_image(encode(_subject_at(850, 500), "PNG"))
    x, y = result.focal_point
    assert 0.70 < x < 0.88 and 0.62 < y < 0.90  # the subject's centre is (0.79, 0.75)
    flat = ImageProcessor().process_image(encode(Image.new("RGB", (300, 200), "white"), "PNG"))
    assert flat.focal_point == (0.5, 0.5)


def test_gravity_auto_crops_around_the_focal_point():
    spec = "sq:300x300:cover:auto:png"
    (v,) = ImageProcessor(parse_variants(spec)).process(encode(_subject_at(100, 100, (1200, 400)), "PNG"))
    out = decode(v.data).convert("RGB")
    assert (v.width, v.height) == (300, 300)
    assert out.getpixel((150, 150)) != (128, 128, 128) or out.getpixel((100, 150)) != (128, 128, 128)
    (centre,) = ImageProcessor(parse_variants("sq:300x300:cover:centre:png")).process(
        encode(_subject_at(100, 100, (1200, 400)), "PNG")
    )
    assert decode(centre.data).convert("RGB").getpixel((150, 150)) == (128, 128, 128)  # centre misses it
