"""Quality per image (`qauto`): the lowest quality that keeps SSIM ≥ the target, in ≤ 3 encodes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from image_pipeline import manifest
from image_pipeline.processor import ImageProcessor, VariantConfig
from image_pipeline.processor import quality as qauto
from image_pipeline.processor.encode import encode
from image_pipeline.processor.fingerprint import describe, fingerprint
from image_pipeline.processor.specs import ImageFormat
from image_pipeline.settings import parse_variants
from tests.images import decode, photo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from ssim import ssim as reference_ssim


def textured(width: int, height: int, detail: float = 40, blur: float = 1.2, mix: float = 0.2) -> Image.Image:
    """A gradient under fine noise: something between a sky and foliage for an encoder."""
    base = decode(photo(width, height))
    noise = Image.effect_noise((width, height), detail).filter(ImageFilter.GaussianBlur(blur))
    return Image.merge("RGB", [Image.blend(band, noise, mix) for band in base.split()])


def encoded(image: Image.Image, fmt: ImageFormat, q: int) -> Image.Image:
    return Image.open(io.BytesIO(encode([image], fmt, q))).convert("RGB")


@pytest.mark.parametrize("fmt", [ImageFormat.JPEG, ImageFormat.WEBP])
@pytest.mark.parametrize("detail", [15, 40, 90])
def test_the_fast_ssim_reads_like_the_gaussian_reference(fmt, detail):
    image = textured(640, 427, detail)
    for q in (40, 70, 90):
        candidate = encoded(image, fmt, q)
        fast, reference = qauto.ssim(image, candidate), reference_ssim(image, candidate)
        if reference >= 0.97:  # the range qauto decides in
            assert abs(fast - reference) <= 0.004, (q, fast, reference)
        assert 0 < fast <= 1
    assert qauto.ssim(image, image) == pytest.approx(1.0, abs=1e-6)


def test_the_chosen_quality_is_the_lowest_that_passes_within_three_encodes():
    image = textured(800, 533)
    calls: list[int] = []

    def counting(q: int) -> bytes:  # the real encoder, counted
        calls.append(q)
        return encode([image], ImageFormat.JPEG, q)

    choice = qauto.choose(image, ImageFormat.JPEG, 85, 0.98, counting)
    assert len(calls) == choice.trials <= qauto.MAX_TRIALS
    assert choice.data == encode([image], ImageFormat.JPEG, choice.quality)
    assert choice.ssim >= 0.98 and choice.quality < 85
    assert reference_ssim(image, decode(choice.data)) >= 0.98 - 0.004
    failed = [q for q in calls if qauto.ssim(image, encoded(image, ImageFormat.JPEG, q)) < 0.98]
    assert all(q < choice.quality for q in failed)  # every lower trial failed; nothing lower passed
    assert 40 <= choice.quality


def test_when_nothing_reaches_the_target_the_ceiling_is_used():
    noise = Image.effect_noise((400, 300), 100).convert("RGB")  # incompressible: no quality ≤ 70 keeps 0.999
    calls: list[int] = []
    choice = qauto.choose(
        noise, ImageFormat.WEBP, 70, 0.999, lambda q: calls.append(q) or encode([noise], ImageFormat.WEBP, q)
    )
    assert choice.quality == 70 and calls == [70]  # one encode: the one q70 makes anyway
    assert choice.data == encode([noise], ImageFormat.WEBP, 70)
    assert choice.ssim < 0.999


def test_qauto_variants_are_smaller_than_fixed_q85_and_say_what_they_chose():
    source = textured(2400, 1600, blur=2.5)
    data = io.BytesIO()
    source.save(data, "JPEG", quality=95)
    specs = parse_variants("small:400x400:webp:qauto;big:1600x1600:jpeg:qauto;fixed:1600x1600:jpeg")
    result = ImageProcessor(specs).process_image(data.getvalue())
    small, big, fixed = result.variants
    assert (big.width, big.height) == (fixed.width, fixed.height) == (1600, 1067)
    assert fixed.quality == 85 and fixed.qauto is None
    assert big.quality < 85 and len(big.data) < 0.8 * len(fixed.data)
    assert small.format is ImageFormat.WEBP and 40 <= small.quality <= 85
    for variant in (small, big):
        assert variant.qauto["target"] == 0.98 and variant.qauto["ssim"] >= 0.98 and 1 <= variant.qauto["trials"] <= 3
        assert decode(variant.data).size == (variant.width, variant.height)
    # the reference SSIM of the chosen big variant against the fixed one's unencoded pixels
    unencoded = decode(data.getvalue()).resize((1600, 1067), Image.Resampling.LANCZOS)
    assert reference_ssim(unencoded, decode(big.data)) >= 0.98 - 0.006

    record = manifest.build(
        bucket="b",
        key="raw/x.jpg",
        etag='"e"',
        processed=result,
        total_ms=1.0,
        fingerprint="f",
        variant_keys={v.name: f"processed/x/{v.name}" for v in result.variants},
    )
    entries = {v["name"]: v for v in json.loads(manifest.dumps(record))["variants"]}
    assert entries["big"]["quality"] == big.quality and entries["big"]["qauto"]["ssim"] >= 0.98
    assert entries["fixed"]["quality"] == 85 and "qauto" not in entries["fixed"]


def test_lossless_outputs_have_no_quality_and_ignore_qauto():
    png = io.BytesIO()
    textured(300, 200).save(png, "PNG")
    (variant,) = ImageProcessor([VariantConfig("m", 100, 100, qauto=0.98)]).process(png.getvalue())  # keeps PNG
    assert variant.format is ImageFormat.PNG and variant.quality is None and variant.qauto is None


def test_the_variants_setting_takes_qauto():
    small, big = parse_variants("small:400x400:webp:qauto;big:1600x1600:jpeg:q90:qauto985")
    assert (small.qauto, small.quality) == (0.98, 85)
    assert (big.qauto, big.quality) == (0.985, 90)
    with pytest.raises(ValueError, match="qauto needs a lossy format"):
        parse_variants("m:400x400:png:qauto")
    with pytest.raises(ValueError, match="unknown option 'qautox'"):
        parse_variants("m:400x400:qautox")
    with pytest.raises(ValueError, match="target SSIM"):
        VariantConfig("m", 10, 10, qauto=1.5)


def test_qauto_changes_the_fingerprint_and_nothing_else_moves():
    base = "thumbnail:150x150:cover:webp;medium:800x800:webp;large:1920x1920:jpeg"
    plain = ImageProcessor(parse_variants(base))
    # a configuration without qauto keeps the fingerprint stored manifests already carry (since its
    # cover crop's gravity became `auto`, around faces; "d05a90314312f063" with `centre` at
    # OUTPUT_VERSION 3, "3b6057c49baec250" at 2)
    assert fingerprint(plain) == "e35db8b6ee4a75f0"
    assert all("qauto" not in v for v in describe(plain)["variants"])
    auto = ImageProcessor(parse_variants(base.replace("large:1920x1920:jpeg", "large:1920x1920:jpeg:qauto")))
    stricter = ImageProcessor(parse_variants(base.replace("large:1920x1920:jpeg", "large:1920x1920:jpeg:qauto99")))
    assert len({fingerprint(plain), fingerprint(auto), fingerprint(stricter)}) == 3


def test_a_seed_from_a_smaller_variant_is_tried_first_and_the_result_still_passes():
    image = textured(800, 533)
    calls: list[int] = []
    choice = qauto.choose(
        image, ImageFormat.JPEG, 85, 0.98, lambda q: calls.append(q) or encode([image], ImageFormat.JPEG, q), seed=45
    )
    assert calls[0] == 45 and len(calls) <= 3
    assert choice.ssim >= 0.98 and 45 < choice.quality <= 85
    assert qauto.ssim(image, encoded(image, ImageFormat.JPEG, 45)) < 0.98  # the seed itself was too low
