"""Private delivery's signed URLs (api/delivery.py), checked the way CloudFront checks them
(tests/cloudfront.py `viewer_may_read`: the public key, the canned or custom policy, CloudFront's
URL-safe base64), and the settings that turn it on: a private setting without its key, key id or
CDN address refuses to start, naming each problem."""

from __future__ import annotations

import base64
import re
import time

import pytest

from image_pipeline.api.delivery import LinkSigner, load_private_key, signer_for
from image_pipeline.api.settings import ApiSettings
from image_pipeline.errors import ConfigError
from tests.cloudfront import key_pair, viewer_may_read

CDN = "https://d111111abcdef8.cloudfront.net/"
KEY_ID = "K2JCJMDEHXQW5F"


@pytest.fixture(scope="module")
def keys() -> tuple[str, bytes]:
    return key_pair()


@pytest.fixture(scope="module")
def other_keys() -> tuple[str, bytes]:
    return key_pair()


def signer(private_pem: str, expiry_s: int = 900) -> LinkSigner:
    return LinkSigner(CDN, KEY_ID, load_private_key(private_pem, "CLOUDFRONT_PRIVATE_KEY"), expiry_s)


def private_env(pem: str, **more: str) -> dict[str, str]:
    return {
        "DELIVERY": "private",
        "PUBLIC_BASE_URL": CDN,
        "CLOUDFRONT_KEY_ID": KEY_ID,
        "CLOUDFRONT_PRIVATE_KEY": pem,
        "API_AUTH": "open",
        **more,
    }


# ---------------------------------------------------------------- the signatures


def test_a_signed_link_is_a_canned_policy_url_that_verifies_with_the_public_key(keys):
    private, public = keys
    url = f"{CDN}processed/0abc/pic/medium.webp"
    before = int(time.time())
    signed = signer(private, expiry_s=600).sign(url)

    assert signed.startswith(url + "?Expires=")
    params = dict(p.split("=", 1) for p in signed.split("?", 1)[1].split("&"))
    assert list(params) == ["Expires", "Signature", "Key-Pair-Id"]  # canned: no Policy parameter
    assert params["Key-Pair-Id"] == KEY_ID
    # at most URL_EXPIRY_SECONDS, at least nine tenths of it (rounded down to a step of 60 s here)
    assert before + 540 < int(params["Expires"]) <= int(time.time()) + 600 and int(params["Expires"]) % 60 == 0
    # CloudFront's URL-safe base64: none of + = / (they are - _ ~), so the URL needs no escaping
    assert re.fullmatch(r"[A-Za-z0-9_~-]+", params["Signature"])
    standard = params["Signature"].replace("-", "+").replace("_", "=").replace("~", "/")
    assert len(base64.b64decode(standard)) == 256  # an RSA-2048 signature
    assert viewer_may_read(signed, public, KEY_ID) is None


def test_it_expires_after_url_expiry_seconds(keys):
    private, public = keys
    signed = signer(private, expiry_s=60).sign(f"{CDN}processed/0abc/pic/large.jpg")
    assert viewer_may_read(signed, public, KEY_ID, now=time.time() + 50) is None
    assert viewer_may_read(signed, public, KEY_ID, now=time.time() + 61) == "expired"


def test_a_signature_covers_its_own_object_only(keys):
    """The signature of image A's URL, put on image B's URL (or on another variant of A), is refused."""
    private, public = keys
    mine = signer(private).sign(f"{CDN}processed/0aaa/pic/medium.webp")
    query = mine.split("?", 1)[1]
    for other in ("processed/0bbb/pic/medium.webp", "processed/0aaa/pic/large.jpg", "raw/0aaa/pic.jpg"):
        assert viewer_may_read(f"{CDN}{other}?{query}", public, KEY_ID) == "signature does not verify"
    assert viewer_may_read(f"{CDN}processed/0aaa/pic/medium.webp", public, KEY_ID) == "missing signature"
    longer = mine.replace("Expires=", "Expires=9")  # a later expiry, written by hand
    assert viewer_may_read(longer, public, KEY_ID) == "signature does not verify"


def test_another_key_pair_does_not_verify(keys, other_keys):
    private, _ = keys
    _, other_public = other_keys
    signed = signer(private).sign(f"{CDN}processed/0abc/pic/medium.webp")
    assert viewer_may_read(signed, other_public, KEY_ID) == "signature does not verify"
    assert viewer_may_read(signed, keys[1], "KOTHERKEYID") == "key not in the trusted key group"


def test_a_width_template_is_signed_once_for_every_width_of_that_image_only(keys):
    private, public = keys
    template = signer(private).sign_template(f"{CDN}processed/0abc/pic/w{{width}}.{{ext}}")
    assert "?Policy=" in template and "&Key-Pair-Id=" + KEY_ID in template
    for width, ext in ((320, "avif"), (640, "webp"), (1920, "jpg")):
        url = template.replace("{width}", str(width)).replace("{ext}", ext)
        assert viewer_may_read(url, public, KEY_ID) is None
    query = template.split("?", 1)[1]
    for other in ("processed/0abc/pic/medium.webp", "processed/0def/pic/w640.webp", "processed/0abc/pic2/w640.webp"):
        assert viewer_may_read(f"{CDN}{other}?{query}", public, KEY_ID) == "the policy does not cover this URL"
    assert (
        viewer_may_read(
            template.replace("{width}", "640").replace("{ext}", "webp"), public, KEY_ID, now=time.time() + 901
        )
        == "expired"
    )


def test_links_outside_the_cdn_are_left_as_they_are(keys):
    private, _ = keys
    sign = signer(private)
    for url in ("/images/0abc/medium", "https://bucket.s3.amazonaws.com/processed/x.webp?X-Amz-Signature=1"):
        assert sign.sign(url) == url and sign.sign_template(url) == url


def test_the_same_link_within_a_step_is_the_same_url(keys, monkeypatch):
    """A browser's cache keys on the whole URL: links given a few seconds apart are identical."""
    private, _ = keys
    sign = signer(private, expiry_s=900)
    url = f"{CDN}processed/0abc/pic/medium.webp"
    clock = [1_800_000_000.0]  # a multiple of 60
    monkeypatch.setattr(time, "time", lambda: clock[0])
    first = sign.sign(url)
    clock[0] += 59
    assert sign.sign(url) == first
    clock[0] += 1
    assert sign.sign(url) != first


# ---------------------------------------------------------------- the settings


def test_private_settings_with_a_pem_make_a_signer(keys):
    private, public = keys
    settings = ApiSettings.from_env(private_env(private), need_bucket=False)
    assert settings.delivery == "private" and settings.cloudfront_key_id == KEY_ID
    assert private not in repr(settings) and "PRIVATE KEY" not in repr(settings)
    made = signer_for(settings)
    assert made is not None
    assert viewer_may_read(made.sign(f"{CDN}processed/a/b.webp"), public, KEY_ID) is None


def test_a_pem_on_one_line_with_escaped_newlines_is_read(keys):
    private, _ = keys
    settings = ApiSettings.from_env(private_env(private.replace("\n", "\\n")), need_bucket=False)
    assert signer_for(settings) is not None


def test_public_is_the_default_and_signs_nothing():
    settings = ApiSettings.from_env({"API_AUTH": "open", "PUBLIC_BASE_URL": CDN}, need_bucket=False)
    assert settings.delivery == "public" and signer_for(settings) is None


def test_private_without_a_key_or_a_cdn_refuses_to_start_naming_each_problem():
    with pytest.raises(ConfigError) as raised:
        ApiSettings.from_env({"DELIVERY": "private", "API_AUTH": "open"}, need_bucket=False)
    words = str(raised.value)
    assert "PUBLIC_BASE_URL" in words and "presigned" in words
    assert "CLOUDFRONT_KEY_ID" in words
    assert "CLOUDFRONT_PRIVATE_KEY (PEM) or CLOUDFRONT_PRIVATE_KEY_SECRET" in words


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"DELIVERY": "signed"}, "DELIVERY='signed' must be public or private"),
        ({"CLOUDFRONT_PRIVATE_KEY": "not a key"}, "CLOUDFRONT_PRIVATE_KEY is not an unencrypted PEM private key"),
        ({"CLOUDFRONT_KEY_ID": "k-1"}, "must be a CloudFront public key id"),
        (
            {"CLOUDFRONT_PRIVATE_KEY_SECRET": "arn:aws:secretsmanager:us-east-1:123456789012:secret:cf-AbCdEf"},
            "set one, not both",
        ),
        (
            {"CLOUDFRONT_PRIVATE_KEY": "", "CLOUDFRONT_PRIVATE_KEY_SECRET": "cf-key"},
            "must be a Secrets Manager secret ARN",
        ),
        ({"DELIVERY": "public"}, "apply to DELIVERY=private, not public"),
    ],
)
def test_bad_delivery_settings_are_refused_in_words(keys, change, words):
    with pytest.raises(ConfigError, match=re.escape(words)) as raised:
        ApiSettings.from_env({**private_env(keys[0]), **change}, need_bucket=False)
    assert "BEGIN" not in str(raised.value)  # the key itself is never in a message


def test_a_small_or_non_rsa_key_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    small, _ = key_pair(1024)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for pem in (small, ec_pem.decode()):
        with pytest.raises(ConfigError, match="RSA private key of 2048 bits or more"):
            ApiSettings.from_env(private_env(pem), need_bucket=False)


def test_on_aws_the_key_is_read_from_its_secrets_manager_secret(keys, moto_server, monkeypatch):
    import boto3

    private, public = keys
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server)
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server)
    arn = secrets.create_secret(Name=f"cloudfront-key-{time.time_ns()}", SecretString=private)["ARN"]
    env = private_env("", CLOUDFRONT_PRIVATE_KEY_SECRET=arn)
    settings = ApiSettings.from_env(env, need_bucket=False)
    made = signer_for(settings)
    assert made is not None
    assert viewer_may_read(made.sign(f"{CDN}processed/a/b.webp"), public, KEY_ID) is None

    missing = arn.rsplit(":", 1)[0] + ":gone-AbCdEf"
    with pytest.raises(ConfigError, match=r"cannot read .*gone-AbCdEf: ResourceNotFoundException"):
        signer_for(ApiSettings.from_env(private_env("", CLOUDFRONT_PRIVATE_KEY_SECRET=missing), need_bucket=False))
    secrets.put_secret_value(SecretId=arn, SecretString="garbage")
    with pytest.raises(ConfigError, match=f"the secret {re.escape(arn)} is not an unencrypted PEM") as raised:
        signer_for(settings)
    assert "garbage" not in str(raised.value)


# ---------------------------------------------------------------- image-pipeline sign --cloudfront


def test_sign_cloudfront_prints_a_signed_url_for_a_key_or_a_url(keys, tmp_path, monkeypatch, capsys):
    from image_pipeline.cli import main

    private, public = keys
    pem = tmp_path / "private_key.pem"
    pem.write_text(private)
    for name in ("CLOUDFRONT_PRIVATE_KEY", "CLOUDFRONT_PRIVATE_KEY_SECRET", "SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PUBLIC_BASE_URL", CDN)
    monkeypatch.setenv("CLOUDFRONT_KEY_ID", KEY_ID)

    assert main(["sign", "--cloudfront", "--private-key", str(pem), "processed/0abc/pic/medium.webp"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith(f"{CDN}processed/0abc/pic/medium.webp?Expires=")
    assert viewer_may_read(url, public, KEY_ID) is None
    assert viewer_may_read(url, public, KEY_ID, now=time.time() + 901) == "expired"  # URL_EXPIRY_SECONDS' default

    # a width URL outside the allowlist: its `sig` first, then CloudFront's signature over both
    monkeypatch.setenv("CLOUDFRONT_PRIVATE_KEY", private)
    assert main(["sign", "--key", "k" * 40, f"{CDN}processed/0abc/pic/w641.webp"]) == 0
    with_sig = capsys.readouterr().out.strip()
    assert main(["sign", "--cloudfront", "--expires-in", "60", with_sig]) == 0
    both = capsys.readouterr().out.strip()
    assert both.startswith(with_sig + "&Expires=")
    assert viewer_may_read(both, public, KEY_ID) is None
    assert viewer_may_read(both, public, KEY_ID, now=time.time() + 61) == "expired"
    assert viewer_may_read(both.replace("sig=", "sig=0"), public, KEY_ID) == "signature does not verify"


def test_sign_cloudfront_without_a_key_says_so(monkeypatch, capsys):
    from image_pipeline.cli import main

    for name in ("CLOUDFRONT_PRIVATE_KEY", "CLOUDFRONT_PRIVATE_KEY_SECRET", "CLOUDFRONT_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    assert main(["sign", "--cloudfront", f"{CDN}processed/0abc/pic/medium.webp"]) == 2
    said = capsys.readouterr().err
    assert "CLOUDFRONT_KEY_ID" in said and "CLOUDFRONT_PRIVATE_KEY (PEM) or CLOUDFRONT_PRIVATE_KEY_SECRET" in said


def test_server_side_srcsets_from_a_signed_template_stay_signed(keys):
    """image_pipeline.urls fills in the API's signed `width_urls.template`: every width, with the
    format by Accept or named, and one outside the allowlist with its `sig` too, is readable."""
    from image_pipeline.urls import srcset, width_url

    private, public = keys
    template = signer(private).sign_template(f"{CDN}processed/0abc/pic/w{{width}}.{{ext}}")
    urls = [width_url(template, 640), width_url(template, 640, "avif"), width_url(template, 641, signing_key="k" * 40)]
    urls += [candidate.split(" ")[0] for candidate in srcset({"template": template, "widths": [384, 1080]}).split(", ")]
    assert "sig=" in urls[2] and len(urls) == 5
    assert [viewer_may_read(u, public, KEY_ID) for u in urls] == [None] * 5
