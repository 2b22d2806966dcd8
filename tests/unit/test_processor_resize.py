"""The largest resize of a job in two bands of output rows, computed at once where two CPUs are
free: the pixels one Lanczos call gives, whatever the number of CPUs."""

from __future__ import annotations

from PIL import Image, ImageChops, ImageDraw, ImageStat

from image_pipeline import ImageProcessor, VariantConfig
from image_pipeline.processor import pipeline
from tests.images import decode, encode


def _photo_like(width: int = 2400, height: int = 1600) -> Image.Image:
    """Gradients and hard-edged shapes, the content of a photo or a screenshot."""
    image = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height)),
        ),
    )
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 97):
        draw.rectangle((i, i // 3, i + 40, i // 3 + 300), fill=(255 - i % 256, 30, i % 256))
        draw.line((0, i, width, height - i), fill=(250, 250, 250), width=2)
    return image


def _max_difference(a: Image.Image, b: Image.Image) -> int:
    return max(high for _, high in ImageChops.difference(a, b).getextrema())


def test_a_large_resize_in_bands_gives_one_calls_pixels():
    rgb = _photo_like()
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    for image in (rgb, rgba.convert("RGBa")):
        for size, box in (((1920, 1280), (0.0, 0.0, 2400.0, 1600.0)), ((1300, 1250), (13.7, 0.0, 2391.25, 1597.5))):
            banded = pipeline._lanczos(image, size, box)
            whole = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
            assert banded.mode == whole.mode and banded.size == size
            # Pillow orders its two passes per call: a band may round between them differently
            # (a level at most here; the mixed set's variants are byte-identical).
            assert _max_difference(banded, whole) <= 1
            assert max(ImageStat.Stat(ImageChops.difference(banded, whole)).mean) < 0.01


def test_the_bands_do_not_depend_on_the_cpus(monkeypatch):
    """One CPU: the same two bands, one after the other, so the same input and settings give the
    same bytes on every host."""
    data = encode(_photo_like(), "PNG")
    specs = [VariantConfig("large", 1920, 1920, format="png"), VariantConfig("small", 300, 300, format="png")]
    two = ImageProcessor(specs).process(data)
    monkeypatch.setattr(pipeline, "_two_cpus", lambda: False)
    one = ImageProcessor(specs).process(data)
    assert [v.data for v in two] == [v.data for v in one]
    assert decode(two[0].data).size == (1920, 1280)


def test_small_and_reducing_resizes_are_one_call():
    image = _photo_like(1200, 800)
    assert (
        pipeline._lanczos(image, (600, 400), (0.0, 0.0, 1200.0, 800.0)).tobytes()
        == image.resize((600, 400), Image.Resampling.LANCZOS, reducing_gap=3.0).tobytes()
    )
    big = _photo_like(2400, 1600)  # 8×: reducing_gap box-reduces first, on the whole image's grid
    assert (
        pipeline._lanczos(big, (300, 200), (0.0, 0.0, 2400.0, 1600.0)).tobytes()
        == big.resize((300, 200), Image.Resampling.LANCZOS, reducing_gap=3.0).tobytes()
    )


def test_no_thread_outlives_a_banded_resize():
    """A warm container keeps its thread count (tests/reliability/test_load.py counts them)."""
    import threading

    image = _photo_like()
    before = threading.active_count()
    pipeline._lanczos(image, (1920, 1280), (0.0, 0.0, 2400.0, 1600.0))
    assert threading.active_count() == before
