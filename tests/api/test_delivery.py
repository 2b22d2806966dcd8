"""DELIVERY=private through the API (Litestar's test client, over a directory and over moto's S3):
every link under PUBLIC_BASE_URL it gives (GET /images/{id}, the list, the gallery, the variant
redirect, lazy variants, the width-URL template the page's <picture> snippet fills in) is a
CloudFront signed URL that the public key verifies, for that object only, until
URL_EXPIRY_SECONDS; the API's own links and presigned GETs stay as they are."""

from __future__ import annotations

import time

import pytest

from image_pipeline.api import pages
from image_pipeline.errors import ConfigError
from tests.cloudfront import key_pair, viewer_may_read
from tests.images import photo

from .conftest import api_of

CDN = "https://d111111abcdef8.cloudfront.net/"
KEY_ID = "K2JCJMDEHXQW5F"
LAZY = "thumbnail:150x150:cover:webp;medium:800x800:webp;xl:2400x2400:jpeg:lazy"


@pytest.fixture(scope="module")
def keys() -> tuple[str, bytes]:
    return key_pair()


@pytest.fixture(params=["filesystem", "s3"])
def client(request, fs_client, keys, monkeypatch):
    monkeypatch.setattr(pages, "GALLERY_ENABLED", True)
    build = fs_client if request.param == "filesystem" else request.getfixturevalue("s3_client")
    private = {
        "DELIVERY": "private",
        "PUBLIC_BASE_URL": CDN,
        "CLOUDFRONT_KEY_ID": KEY_ID,
        "CLOUDFRONT_PRIVATE_KEY": keys[0],
        "URL_EXPIRY_SECONDS": "300",
        "VARIANTS": LAZY,
    }
    return lambda **env: build(**{**private, **env})


def readable(url: str, keys, **kwargs) -> bool:
    return viewer_may_read(url, keys[1], KEY_ID, **kwargs) is None


def test_every_cdn_link_the_api_gives_is_signed_and_expires(client, keys):
    api = client()
    made = api.post("/images", files={"file": ("pic.jpg", photo(1200, 800), "image/jpeg")})
    assert made.status_code == 201, made.text
    image = made.json()
    image_id = image["id"]
    links = []
    for body in (image, api.get(f"/images/{image_id}").json(), api.get("/images").json()["items"][0]):
        assert [v["name"] for v in body["variants"]] == ["thumbnail", "medium"]
        for v in body["variants"]:
            assert v["url"].startswith(f"{CDN}processed/{image_id}/pic/{v['name']}.webp?Expires=")
            links += [v["url"], v["src"]]
        (lazy,) = body["lazy_variants"]
        assert lazy["url"].startswith(f"{CDN}processed/{image_id}/pic/xl.jpg?Expires=")
        links.append(lazy["url"])
    (card,) = api.get("/api/gallery").json()["items"]
    links += [v["url"] for v in card["variants"]] + [v["src"] for v in card["variants"]]
    redirect = api.get(f"/images/{image_id}/medium", follow_redirects=False)
    assert redirect.status_code == 302
    links.append(redirect.headers["location"])

    for url in links:
        assert readable(url, keys), url
        assert not readable(url, keys, now=time.time() + 301), url  # URL_EXPIRY_SECONDS later
        unsigned = url.split("?", 1)[0]
        assert viewer_may_read(unsigned, keys[1], KEY_ID) == "missing signature"


def test_the_width_template_fills_in_to_signed_urls_for_that_image_only(client, keys):
    api = client()
    first = api.post("/images", files={"file": ("pic.jpg", photo(1200, 800), "image/jpeg")}).json()
    second = api.post("/images", files={"file": ("pic.jpg", photo(640, 480), "image/jpeg")}).json()
    ladder = first["width_urls"]
    assert ladder["template"].startswith(f"{CDN}processed/{first['id']}/pic/w{{width}}.{{ext}}?Policy=")
    assert ladder["widths"]
    for width in ladder["widths"]:
        for ext in ("avif", "webp", ladder["fallback"]):  # what cards.js's ladderPlan fills in
            url = ladder["template"].replace("{width}", str(width)).replace("{ext}", ext)
            assert readable(url, keys), url
    query = ladder["template"].split("?", 1)[1]
    # the first image's signature does not open the second image's widths, nor its named variants
    assert not readable(f"{CDN}processed/{second['id']}/pic/w640.webp?{query}", keys)
    assert not readable(f"{CDN}processed/{first['id']}/pic/medium.webp?{query}", keys)


def test_public_delivery_is_unchanged(client):
    api = client(DELIVERY="public", CLOUDFRONT_KEY_ID="", CLOUDFRONT_PRIVATE_KEY="")
    image = api.post("/images", files={"file": ("pic.jpg", photo(640, 480), "image/jpeg")}).json()
    medium = next(v for v in image["variants"] if v["name"] == "medium")
    assert medium["url"] == medium["src"] == f"{CDN}processed/{image['id']}/pic/medium.webp"
    assert "?" not in image["width_urls"]["template"]


def test_the_signer_is_made_once_with_the_app(client):
    api = client()
    assert api_of(api).signer is not None and api_of(api).signer.expiry_s == 300


def test_a_private_api_without_a_key_does_not_start(fs_client):
    with pytest.raises(ConfigError, match="CLOUDFRONT_PRIVATE_KEY"):
        fs_client(DELIVERY="private", PUBLIC_BASE_URL=CDN, CLOUDFRONT_KEY_ID=KEY_ID)


def test_the_lambda_api_reads_the_key_from_its_secret_and_signs(moto_server, bucket, keys):
    """The API function's entry point in a fresh interpreter, as on Lambda: the key comes from
    Secrets Manager (moto) when the module is loaded, and the links it gives are signed."""
    import os

    import boto3

    from .test_lambda_adapter import _body, _run

    secrets = boto3.client("secretsmanager", endpoint_url=moto_server)
    arn = secrets.create_secret(Name=f"cloudfront-key-{bucket}", SecretString=keys[0])["ARN"]
    env = {k: v for k, v in os.environ.items() if k not in ("API_AUTH", "JWT_SECRET", "JWKS_URL")}
    out = _run(
        "jwt",
        {
            **env,
            "BUCKET_NAME": bucket,
            "AWS_ENDPOINT_URL_S3": moto_server,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server,
            "DELIVERY": "private",
            "PUBLIC_BASE_URL": CDN,
            "CLOUDFRONT_KEY_ID": KEY_ID,
            "CLOUDFRONT_PRIVATE_KEY_SECRET": arn,
        },
    )
    assert out["made"]["statusCode"] == 201, out["made"]
    made = _body(out["made"])
    assert made["variants"]
    for v in made["variants"]:
        assert v["url"].startswith(CDN) and readable(v["url"], keys) and readable(v["src"], keys)
    assert readable(made["width_urls"]["template"].replace("{width}", "320").replace("{ext}", "webp"), keys)


def test_the_litestar_plugin_signs_too(keys):
    """The API inside another Litestar app (ImagePipelinePlugin) with the same private settings."""
    from litestar import Litestar
    from litestar.testing import TestClient
    from litestar_storages import MemoryStorage

    from image_pipeline.api import ImagePipelinePlugin
    from image_pipeline.api.settings import ApiSettings

    settings = ApiSettings.from_env(
        {
            "API_AUTH": "open",
            "DELIVERY": "private",
            "PUBLIC_BASE_URL": CDN,
            "CLOUDFRONT_KEY_ID": KEY_ID,
            "CLOUDFRONT_PRIVATE_KEY": keys[0],
        },
        need_bucket=False,
    )
    plugin = ImagePipelinePlugin(storage=MemoryStorage(), path="/media", settings=settings, owner=lambda c: "alice")
    with TestClient(Litestar(plugins=[plugin])) as client:
        made = client.post("/media/images", files={"file": ("sea.jpg", photo(640, 480), "image/jpeg")})
        assert made.status_code == 201, made.text
        body = made.json()
        for v in body["variants"]:
            assert v["url"].startswith(f"{CDN}processed/{body['id']}/sea/") and readable(v["url"], keys)
        redirect = client.get(f"/media/images/{body['id']}/medium", follow_redirects=False)
        assert redirect.status_code == 302 and readable(redirect.headers["location"], keys)
