"""Ratio URLs' grammar (`w640-16x9.webp`, `w640-16x9`): one spelling per output, every other
spelling refused (400) naming the one to use; the allowlist and the signature rule; settings."""

from __future__ import annotations

import pytest

from image_pipeline.errors import ConfigError
from image_pipeline.ondemand import Forbidden, OnDemand, OnDemandSettings
from image_pipeline.ondemand.paths import BadOutput, Ratio, is_width_leaf, parse_ratios, parse_width
from image_pipeline.ondemand.signing import sign, verify
from image_pipeline.processor import ImageFormat, ImageProcessor
from image_pipeline.service import ImageService

KEY = b"k" * 32
PATH = "/images/0123456789abcdefghjk/"


@pytest.mark.parametrize(
    ("leaf", "width", "fmt", "ratio"),
    [
        ("w640-16x9.webp", 640, ImageFormat.WEBP, Ratio(16, 9)),
        ("w640-16x9", 640, None, Ratio(16, 9)),
        ("w16-1x1.jpg", 16, ImageFormat.JPEG, Ratio(1, 1)),
        ("w3840-9x16.avif", 3840, ImageFormat.AVIF, Ratio(9, 16)),
        ("w641-100x99.png", 641, ImageFormat.PNG, Ratio(100, 99)),
        ("w640-21x9", 640, None, Ratio(21, 9)),
        # width URLs stay exactly as they were
        ("w640.webp", 640, ImageFormat.WEBP, None),
        ("w640", 640, None, None),
    ],
)
def test_ratio_leaves_parse_to_one_output(leaf, width, fmt, ratio):
    assert is_width_leaf(leaf)
    request = parse_width(leaf)
    assert (request.width, request.format, request.ratio) == (width, fmt, ratio)
    assert request.leaf == leaf  # canonical: the leaf asked for is the leaf stored
    assert request.unformatted == leaf.partition(".")[0]  # what a signature covers


@pytest.mark.parametrize(
    ("leaf", "named"),
    [
        ("w640-32x18.webp", "use 16x9"),  # not in lowest terms
        ("w640-2x2", "use 1x1"),
        ("w640-1920x1080.jpg", "use 16x9"),  # sides above 100 that have a lowest form
        ("w640-200x100", "use 2x1"),
        ("w640-016x9.webp", "use 16x9"),  # leading zeros
        ("w640-16X9.webp", "use 16x9"),  # upper case
        ("w640-16:9.webp", "use 16x9"),
        ("w640-101x100.webp", "from 1 to 100"),  # lowest terms, but a side above 100
        ("w640-0x9.webp", "from 1 to 100"),  # zero
        ("w640-16x0", "from 1 to 100"),
        ("w640-16x.webp", "from 1 to 100"),  # junk
        ("w640-x9.webp", "from 1 to 100"),
        ("w640-.webp", "from 1 to 100"),
        ("w640-", "from 1 to 100"),
        ("w640-square.webp", "from 1 to 100"),
        ("w640-16x9x2.webp", "from 1 to 100"),
        ("w640-16x9-1.webp", "from 1 to 100"),
        ("w640--16x9.webp", "from 1 to 100"),
        ("w640-1.5x1.webp", "from 1 to 100"),
        ("w640-１６x9.webp", "from 1 to 100"),
    ],
)
def test_other_spellings_of_a_ratio_are_refused_naming_the_one_to_use(leaf, named):
    assert is_width_leaf(leaf)
    with pytest.raises(BadOutput) as refused:
        parse_width(leaf)
    assert named in str(refused.value)


@pytest.mark.parametrize(
    "leaf",
    ["w0-16x9.webp", "w0640-16x9.webp", "w8193-16x9.webp", "w640-16x9.jpeg", "w640-16x9.WEBP", "w640-16x9.webp.x"],
)
def test_the_width_and_the_extension_of_a_ratio_url_follow_the_width_url_rules(leaf):
    with pytest.raises(BadOutput):
        parse_width(leaf)


@pytest.mark.parametrize(
    ("ratio", "source", "width", "size"),
    [
        ("16x9", (1200, 800), 640, (640, 360)),
        ("1x1", (1200, 800), 640, (640, 640)),
        ("9x16", (1200, 800), 640, (450, 800)),  # the 9:16 window is 450 wide: never upscaled
        ("16x9", (400, 300), 640, (400, 225)),  # a small source: its own window
        ("21x9", (1200, 800), 16, (16, 7)),
        ("1x1", (1, 10000), 640, (1, 1)),
        ("100x1", (1, 10000), 640, (1, 1)),
    ],
)
def test_a_ratio_output_is_the_largest_window_at_most_width_wide(ratio, source, width, size):
    a, _, b = ratio.partition("x")
    assert Ratio(int(a), int(b)).size(width, *source) == size


def test_ratios_outside_the_allowlist_need_the_signature():
    ondemand = OnDemand(ImageService(ImageProcessor()), OnDemandSettings(signing_key=KEY))
    assert ondemand.width("w640-16x9.webp", PATH + "w640-16x9.webp", None).ratio == Ratio(16, 9)
    with pytest.raises(Forbidden) as refused:
        ondemand.width("w640-5x4.webp", PATH + "w640-5x4.webp", None)
    assert "ratio 5x4 is not in the allowlist" in str(refused.value)
    with pytest.raises(Forbidden):  # an allowlisted ratio at a width outside the allowlist
        ondemand.width("w641-16x9.webp", PATH + "w641-16x9.webp", None)
    signed = sign(KEY, PATH + "w641-5x4.webp").partition("?sig=")[2]
    assert ondemand.width("w641-5x4.avif", PATH + "w641-5x4.avif", signed).ratio == Ratio(5, 4)
    assert ondemand.width("w641-5x4", PATH + "w641-5x4", signed).width == 641  # every format of it
    with pytest.raises(Forbidden):  # the signature of one ratio is not another's
        ondemand.width("w641-4x5.webp", PATH + "w641-4x5.webp", signed)
    assert not verify(KEY, PATH + "w641.webp", signed)  # nor the width URL's


def test_without_a_signing_key_only_the_allowlists_work():
    ondemand = OnDemand(ImageService(ImageProcessor()), OnDemandSettings())
    with pytest.raises(Forbidden) as refused:
        ondemand.width("w640-5x4", PATH + "w640-5x4", "anything")
    assert "signing is off" in str(refused.value)


def test_settings_parse_ondemand_ratios_with_clear_errors():
    default = OnDemandSettings.from_env({}).ratios
    assert [str(r) for r in default] == ["1x1", "4x5", "3x4", "2x3", "9x16", "4x3", "3x2", "16x9", "21x9"]
    assert OnDemandSettings.from_env({"ONDEMAND_RATIOS": " 5x4, 1x1,5x4"}).ratios == (Ratio(5, 4), Ratio(1, 1))
    with pytest.raises(ConfigError) as caught:
        OnDemandSettings.from_env({"ONDEMAND_RATIOS": "16x9,32x18,abc"})
    assert "ONDEMAND_RATIOS" in str(caught.value) and "use 16x9" in str(caught.value)
    with pytest.raises(ValueError, match="101x1"):
        parse_ratios("101x1")


def test_seven_to_three_is_spelt_by_its_known_name():
    assert parse_width("w640-21x9.webp").ratio == Ratio(21, 9)
    for leaf in ("w640-7x3.webp", "w640-42x18.webp"):
        with pytest.raises(BadOutput, match="use 21x9"):
            parse_width(leaf)
