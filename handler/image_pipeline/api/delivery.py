"""Private delivery: CloudFront signed URLs for the links the API gives (DELIVERY=private).

With DELIVERY=private the CDN (PUBLIC_BASE_URL) serves `processed/` only to requests signed with
the private key of a trusted key group (the templates' `Delivery=private`). `LinkSigner.sign` is
the one place a link under PUBLIC_BASE_URL is made readable: a canned policy (the exact URL, until
now + URL_EXPIRY_SECONDS), RSA-SHA1, CloudFront's URL-safe base64, by botocore's `CloudFrontSigner`.
`LinkSigner.sign_template` signs a width-URL template (`…/w{width}.{ext}`) once, with a custom
policy whose resource is the image's own `…/w*`: every width and format of that image, nothing
else, until the same expiry. Links anywhere else (the API's own paths, presigned S3 GETs) are
returned as they are: without a CDN, delivery is already through short-lived presigned GETs.

The private key comes from CLOUDFRONT_PRIVATE_KEY (PEM; `serve` and tests) or, on AWS, from the
Secrets Manager secret CLOUDFRONT_PRIVATE_KEY_SECRET names, read once per container when the app
is created. Neither the key nor the secret's value is ever logged or put in an error message.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from ..errors import ConfigError

DELIVERY_MODES = ("public", "private")
SIGNED_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id")  # what CloudFront reads and strips


class DeliverySettings(Protocol):
    """What signing reads of the API's settings (settings.ApiSettings has them; settings.py imports
    this module, so the type is named by what it holds, not by that class)."""

    @property
    def delivery(self) -> str: ...
    @property
    def public_base_url(self) -> str | None: ...
    @property
    def cloudfront_key_id(self) -> str | None: ...
    @property
    def cloudfront_private_key(self) -> str | None: ...
    @property
    def cloudfront_private_key_secret(self) -> str | None: ...
    @property
    def url_expiry_s(self) -> int: ...


def load_private_key(pem: str | bytes, where: str) -> Callable[[bytes], bytes]:
    """An RSA-SHA1 (PKCS#1 v1.5) signer over a PEM private key; ConfigError, in words, otherwise.
    `where` names the setting in the message (never the key)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    data = data.replace(b"\\n", b"\n").strip()  # a PEM pasted into one env line with literal \n
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ConfigError(f"{where} must be an RSA private key of 2048 bits or more (CloudFront's key type)")

    def sign(message: bytes) -> bytes:
        return key.sign(message, padding.PKCS1v15(), hashes.SHA1())  # CloudFront verifies SHA-1

    return sign


def read_secret(arn: str) -> str:
    """The secret's string (the PEM) from Secrets Manager; ConfigError naming the ARN, not the value."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = boto3.client("secretsmanager").get_secret_value(SecretId=arn)
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(f"CLOUDFRONT_PRIVATE_KEY_SECRET: cannot read {arn}: {type(exc).__name__}") from None
    value = answer.get("SecretString")
    if value is None:
        binary = answer.get("SecretBinary")
        value = binary.decode("utf-8", "replace") if isinstance(binary, bytes) else ""
    return value


class LinkSigner:
    """Signs links under `base` (PUBLIC_BASE_URL) for `expiry_s` seconds; others pass unchanged."""

    def __init__(self, base: str, key_id: str, rsa_signer: Callable[[bytes], bytes], expiry_s: int) -> None:
        from botocore.signers import CloudFrontSigner

        self.base = base
        self.expiry_s = expiry_s
        self._signer = CloudFrontSigner(key_id, rsa_signer)

    def expires(self) -> int:
        """When a link given now expires: now + `expiry_s`, rounded down to a step of a tenth of it
        (at most 60 s). Links given within one step are identical, so a browser's cache and this
        signer's reuse them; each lives at least nine tenths of `expiry_s` and never longer."""
        step = max(1, min(60, self.expiry_s // 10))
        return (int(time.time()) + self.expiry_s) // step * step

    def sign(self, url: str) -> str:
        """`url` signed with a canned policy when it is under the CDN's base; as it is otherwise."""
        if not url.startswith(self.base):
            return url
        return self._canned(url, self.expires())

    def sign_template(self, template: str) -> str:
        """A width-URL template (`<base><image's prefix>w{width}.{ext}`) signed once for all of the
        image's width URLs: a custom policy over `<base><image's prefix>w*`."""
        if not template.startswith(self.base):
            return template
        head, _, _ = template.rpartition("/")
        return self._custom(template, head + "/w*", self.expires())

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one signer per app; same URL, same step: same answer
    def _canned(self, url: str, expires: int) -> str:
        return self._signer.generate_presigned_url(url, date_less_than=datetime.fromtimestamp(expires, UTC))

    def _custom(self, url: str, resource: str, expires: int) -> str:
        policy = self._signer.build_policy(resource, datetime.fromtimestamp(expires, UTC))
        return self._signer.generate_presigned_url(url, policy=policy)


def signer_for(settings: DeliverySettings) -> LinkSigner | None:
    """The API's signer (None with DELIVERY=public): the key from the settings or its secret, read
    now (once per app, so once per Lambda container)."""
    if settings.delivery != "private":
        return None
    base, key_id = settings.public_base_url, settings.cloudfront_key_id
    pem, secret = settings.cloudfront_private_key, settings.cloudfront_private_key_secret
    if base is None or key_id is None or (pem is None and secret is None):  # ApiSettings.from_env refuses these
        raise ConfigError("DELIVERY=private needs PUBLIC_BASE_URL, CLOUDFRONT_KEY_ID and a private key")
    if pem is not None:
        rsa_signer = load_private_key(pem, "CLOUDFRONT_PRIVATE_KEY")
    else:
        assert secret is not None
        rsa_signer = load_private_key(read_secret(secret), f"the secret {secret}")
    return LinkSigner(base, key_id, rsa_signer, settings.url_expiry_s)
