"""The configuration fingerprint: what changes outputs changes it, nothing else does."""

from __future__ import annotations

import re

from image_pipeline.processor import ImageProcessor, Limits, VariantConfig
from image_pipeline.processor.fingerprint import OUTPUT_VERSION, describe, fingerprint
from image_pipeline.settings import Settings, parse_variants

BASE = "thumbnail:150x150:cover:webp;medium:800x800:webp;large:1920x1920:jpeg"


def fp(spec: str = BASE, **options) -> str:
    return fingerprint(ImageProcessor(parse_variants(spec), **options))


def test_is_short_hex_and_stable():
    assert re.fullmatch(r"[0-9a-f]{16}", fp())
    assert fp() == fp()  # a new processor from the same settings: the same string


def test_every_output_affecting_change_gives_another_fingerprint():
    changed = [
        BASE + ";avif:1200x1200:avif",  # a variant added
        "thumbnail:150x150:cover:webp;medium:800x800:webp",  # one removed
        BASE.replace("1920x1920", "2560x2560"),  # a box
        BASE.replace(":cover:", ":contain:"),  # fit
        BASE.replace(":cover:", ":cover:attention:"),  # gravity
        BASE.replace("large:1920x1920:jpeg", "large:1920x1920:webp"),  # format
        BASE.replace("large:1920x1920:jpeg", "large:1920x1920"),  # format: keep the source's
        BASE + ":q70",  # quality
        BASE.replace("large:", "big:"),  # a name (the output key)
    ]
    prints = {fp(spec) for spec in changed}
    assert len(prints) == len(changed) and fp() not in prints
    assert fp(keep_icc_profile=True) != fp()
    assert fp(strip_metadata=False) != fp()
    assert fp(background_color=(0, 0, 0)) != fp()
    assert fp(preserve_original=True) != fp()


def test_limits_and_variant_order_do_not_change_it():
    same = ImageProcessor(parse_variants(BASE), limits=Limits(max_bytes=1, max_pixels=10, max_frames=1))
    assert fingerprint(same) == fp()
    reordered = ";".join(reversed(BASE.split(";")))
    assert fp(reordered) == fp()


def test_settings_outside_the_processor_do_not_change_it():
    env = {"VARIANTS": BASE}
    one = Settings.from_env(env)
    other = Settings.from_env(
        {
            **env,
            "CACHE_CONTROL": "no-store",
            "RAW_PREFIX": "in/",
            "PROCESSED_PREFIX": "out/",
            "RAW_DISPOSITION": "delete",
        }
    )
    assert fingerprint(ImageProcessor(one.variants)) == fingerprint(ImageProcessor(other.variants))


def test_output_version_is_part_of_it():
    described = describe(ImageProcessor([VariantConfig("a", 10, 10)]))
    assert described["output_version"] == OUTPUT_VERSION
    assert described["variants"] == [
        {"name": "a", "width": 10, "height": 10, "fit": "contain", "gravity": "centre", "format": "auto", "quality": 85}
    ]
