"""What an on-demand request may ask for, before any storage call: the leaf grammar (one spelling per
output), format negotiation from `Accept`, the signature, and the settings."""

from __future__ import annotations

import pytest

from image_pipeline.errors import ConfigError
from image_pipeline.ondemand import OnDemandSettings
from image_pipeline.ondemand.paths import BadOutput, fallback_format, is_width_leaf, negotiate, parse_width
from image_pipeline.ondemand.signing import sign, signature, verify
from image_pipeline.processor import ImageFormat

KEY = b"k" * 32


@pytest.mark.parametrize(
    ("leaf", "width", "fmt"),
    [
        ("w640.webp", 640, ImageFormat.WEBP),
        ("w1.jpg", 1, ImageFormat.JPEG),
        ("w8192.avif", 8192, ImageFormat.AVIF),
        ("w750.png", 750, ImageFormat.PNG),
        ("w640", 640, None),
    ],
)
def test_width_leaves_parse_to_one_output(leaf, width, fmt):
    request = parse_width(leaf)
    assert (request.width, request.format) == (width, fmt)
    assert request.leaf == leaf  # canonical: the leaf asked for is the leaf stored


@pytest.mark.parametrize(
    "leaf",
    [
        "w0.webp",
        "w8193.webp",
        "w99999.webp",
        "w0640.webp",
        "wabc.webp",
        "w64x.webp",
        "w640.gif",
        "w640.jpeg",
        "w640.WEBP",
        "w640.webp.x",
        "w640.webp/",
        "w-5.jpg",
        "w6 40.jpg",
        "w640.",
        "w.webp",
        "w１２.webp",
    ],
)
def test_malformed_width_leaves_are_refused_not_mapped(leaf):
    assert is_width_leaf(leaf)
    with pytest.raises(BadOutput):
        parse_width(leaf)


@pytest.mark.parametrize("leaf", ["thumbnail", "large", "xl", "wide", "w"])
def test_variant_names_are_not_width_leaves(leaf):
    assert not is_width_leaf(leaf)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", ImageFormat.AVIF),  # Chrome
        ("image/webp,*/*", ImageFormat.WEBP),  # older Firefox
        ("image/avif;q=0,image/webp", ImageFormat.WEBP),
        ("IMAGE/AVIF", ImageFormat.AVIF),
        ("image/png,image/*;q=0.8,*/*;q=0.5", None),  # an old Safari: the fallback
        ("*/*", None),
        ("", None),
        (None, None),
        # q outside RFC 9110's qvalue grammar (0 to 1, at most three decimals) refuses the type, as
        # the CloudFront Function does (tests/unit/test_template.py runs both over one table)
        ("image/avif;q=infinity,image/webp", ImageFormat.WEBP),
        ("image/avif;q=0.5x", None),
        ("image/avif;q=0.5=1", None),
        ("image/avif;q=1_0", None),
        ("image/avif;q=2", None),
        ("image/avif;q=0.0001", None),
        ("image/avif;q=1.000,image/webp", ImageFormat.AVIF),
        ("image/avif; q= 0.001", ImageFormat.AVIF),
    ],
)
def test_negotiation_prefers_avif_then_webp_then_the_fallback(accept, fmt):
    assert negotiate(accept) is fmt


def test_the_fallback_is_png_only_where_the_image_has_alpha():
    assert fallback_format({"type": "png", "alpha": True}) is ImageFormat.PNG
    assert fallback_format({"type": "png", "alpha": False}) is ImageFormat.JPEG
    assert fallback_format({"type": "jpeg"}) is ImageFormat.JPEG  # manifests before `alpha`: by type
    assert fallback_format({"type": "webp"}) is ImageFormat.PNG


def test_a_signature_covers_the_path_without_its_format():
    path = "/images/0123456789abcdefghjk/w641.webp"
    signed = sign(KEY, path)
    sig = signed.partition("?sig=")[2]
    assert len(sig) == 43 and "=" not in sig
    assert verify(KEY, path, sig)
    assert verify(KEY, "/images/0123456789abcdefghjk/w641.avif", sig)  # the browser's format choice
    assert verify(KEY, "/images/0123456789abcdefghjk/w641", sig)
    assert not verify(KEY, "/images/0123456789abcdefghjk/w642.webp", sig)  # another size
    assert not verify(KEY, "/images/0123456789abcdefghjk-/w641.webp", sig)  # another image
    assert not verify(b"j" * 32, path, sig)  # another key
    assert not verify(KEY, path, sig[:-1] + ("A" if sig[-1] != "A" else "B"))  # tampered
    assert not verify(KEY, path, None) and not verify(KEY, path, "") and not verify(KEY, path, "é")


def test_sign_keeps_urls_and_other_parameters_and_replaces_an_old_signature():
    url = "https://d111.cloudfront.net/processed/a/b/w641?x=1&sig=old"
    signed = sign(KEY, url)
    assert signed.startswith("https://d111.cloudfront.net/processed/a/b/w641?x=1&sig=")
    assert signed.count("sig=") == 1
    assert signed.endswith(signature(KEY, "/processed/a/b/w641"))


def test_settings_validate_widths_and_key_length():
    assert OnDemandSettings.from_env({}).signing_key is None
    assert 640 in OnDemandSettings.from_env({}).widths
    assert OnDemandSettings.from_env({"ONDEMAND_WIDTHS": "300, 100,300"}).widths == {100, 300}
    with pytest.raises(ConfigError) as caught:
        OnDemandSettings.from_env({"ONDEMAND_WIDTHS": "100,0,abc", "SIGNING_KEY": "short"})
    assert "ONDEMAND_WIDTHS" in str(caught.value) and "SIGNING_KEY" in str(caught.value)
