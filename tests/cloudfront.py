"""CloudFront Functions run for real: the JavaScript a template deploys, in `node`, over viewer
requests shaped as CloudFront hands them to a viewer-request function (cloudfront-js-2.0).

`node` is the only JavaScript engine here (Debian's `nodejs`; `.ci/run` installs it). Without it
the tests that need it skip, except in CI (`CI` or `REQUIRE_NODE` set), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

_HARNESS = """
const requests = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(requests.map(function (r) {
    var headers = {};
    Object.keys(r.headers).forEach(function (name) { headers[name.toLowerCase()] = {value: r.headers[name]}; });
    var event = {version: '1.0', context: {eventType: 'viewer-request'}, viewer: {ip: '203.0.113.9'},
                 request: {method: r.method, uri: r.uri, querystring: {}, headers: headers, cookies: {}}};
    return handler(event).uri;
})));
"""


def node() -> str:
    found = shutil.which("node")
    if found is None:
        if os.environ.get("CI") or os.environ.get("REQUIRE_NODE"):
            pytest.fail("node is needed to run the CloudFront Function (apt-get install nodejs)")
        pytest.skip("node is not installed: the CloudFront Function cannot be run")
    return found


def viewer_request_uris(code: str, requests: list[tuple[str, dict[str, str]]], method: str = "GET") -> list[str]:
    """The URI each (uri, headers) request leaves the viewer-request function `code` with."""
    payload = json.dumps([{"uri": uri, "headers": headers, "method": method} for uri, headers in requests])
    out = subprocess.run(
        [node(), "-e", code + _HARNESS], input=payload, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


# ---------------------------------------------------------------- signed URLs (trusted key groups)


def _cloudfront_b64decode(text: str) -> bytes:
    """CloudFront's URL-safe base64: `-` for `+`, `_` for `=`, `~` for `/`."""
    import base64

    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"), validate=True)


def viewer_may_read(url: str, public_key_pem: bytes, key_id: str, now: float | None = None) -> str | None:
    """What CloudFront decides for a viewer's `url` on a behaviour that trusts the key `key_id`
    (public key `public_key_pem`): None when it serves it, else why it answers 403. Written from
    CloudFront's documentation, not from the signing code: the signed parameters are taken out of
    the query; a canned policy (`Expires`) is rebuilt over the URL that remains, a custom one
    (`Policy`) is decoded; the signature (RSA-SHA1, PKCS#1 v1.5) must verify over that policy; the
    policy's resource (`*` any characters, `?` one) must match the URL; now must be before its
    DateLessThan (and after DateGreaterThan when given)."""
    import re
    import time

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    now = time.time() if now is None else now
    path, _, query = url.partition("?")
    pairs = [p.partition("=") for p in query.split("&")] if query else []
    signed = {k: v for k, _, v in pairs if k in ("Expires", "Policy", "Signature", "Key-Pair-Id")}
    kept = "&".join(k + s + v for k, s, v in pairs if k not in signed)
    rest = path + ("?" + kept if kept else "")  # the URL as the viewer asked, signing parameters taken out
    if "Signature" not in signed or "Key-Pair-Id" not in signed:
        return "missing signature"
    if signed["Key-Pair-Id"] != key_id:
        return "key not in the trusted key group"
    if "Policy" in signed:
        policy = _cloudfront_b64decode(signed["Policy"])
    elif "Expires" in signed:
        # the documented canned policy, byte for byte: the URL as the resource, no whitespace
        canned = '{"Statement":[{"Resource":%RESOURCE%,"Condition":{"DateLessThan":{"AWS:EpochTime":%EXPIRES%}}}]}'
        policy = canned.replace("%RESOURCE%", json.dumps(rest)).replace("%EXPIRES%", signed["Expires"]).encode()
    else:
        return "neither Expires nor Policy"
    public_key = serialization.load_pem_public_key(public_key_pem)
    try:
        public_key.verify(_cloudfront_b64decode(signed["Signature"]), policy, padding.PKCS1v15(), hashes.SHA1())  # type: ignore[union-attr, call-arg]
    except InvalidSignature:
        return "signature does not verify"
    (statement,) = json.loads(policy)["Statement"]
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in statement["Resource"])
    if not re.fullmatch(pattern, rest):
        return "the policy does not cover this URL"
    condition = statement["Condition"]
    if now >= condition["DateLessThan"]["AWS:EpochTime"]:
        return "expired"
    if "DateGreaterThan" in condition and now < condition["DateGreaterThan"]["AWS:EpochTime"]:
        return "not valid yet"
    return None


def key_pair(bits: int = 2048) -> tuple[str, bytes]:
    """A fresh RSA key pair, as `openssl genrsa` / `openssl rsa -pubout` make one for CloudFront:
    (private key PEM as text, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public
