"""Owners, with really signed tokens (PyJWT): two users and an admin, over moto server's S3 and over a
directory. Every image belongs to the token that made it; another user's image answers exactly as
an id that does not exist; the admin scope may act on all of them; tokens that are missing,
expired, wrongly signed, `alg: none`, or for another issuer or audience are 401."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest

from image_pipeline import ids
from image_pipeline.api import pages
from image_pipeline.api.auth import make_token
from image_pipeline.api.local_events import LocalEventSource
from tests.images import photo

from .conftest import api_of, decode_policy, listing, wait_for

SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"
OWNED = {"API_AUTH": "jwt", "JWT_SECRET": SECRET}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ALICE = bearer(make_token(SECRET, "alice"))
BOB = bearer(make_token(SECRET, "bob"))
ADMIN = bearer(make_token(SECRET, "carol", scope="openid images:admin"))


@pytest.fixture(params=["filesystem", "s3"])
def owned(request, fs_client):
    """A factory: the API with owners (HS256 tokens verified in the app) over each backend."""
    if request.param == "filesystem":
        return lambda **env: fs_client(**OWNED, **env)
    s3_client = request.getfixturevalue("s3_client")
    return lambda **env: s3_client(**OWNED, **env)


def _upload(client, headers, name="a.jpg", width=240) -> dict:
    made = client.post("/images", files={"file": (name, photo(width, width * 2 // 3), "image/jpeg")}, headers=headers)
    assert made.status_code == 201, made.text
    return made.json()


def _stored(client) -> list[str]:
    """Every key the backend holds (filesystem: its directory; S3: the bucket)."""
    api = api_of(client)
    store = api.store

    async def keys():
        found = []
        for prefix in ("raw/", "processed/"):
            found += [o.key for o in await store.list(prefix)]
        return found

    return asyncio.run(keys()) if api.backend.kind == "filesystem" else _s3_keys(api)


def _s3(api):
    import boto3

    return boto3.client("s3", endpoint_url=api.backend.endpoint_url)


def _s3_keys(api) -> list[str]:
    return listing(_s3(api), api.backend.bucket)


def _read(client, key: str) -> tuple[bytes, dict[str, str]]:
    """An object's bytes and metadata, read beside the app (its S3 client lives on its own loop)."""
    api = api_of(client)
    if api.backend.kind == "filesystem":
        raw = asyncio.run(api.store.read(key))
        return raw.data, raw.metadata
    got = _s3(api).get_object(Bucket=api.backend.bucket, Key=key)
    return got["Body"].read(), got["Metadata"]


def _write(client, key: str, data: bytes) -> None:
    api = api_of(client)
    if api.backend.kind == "filesystem":
        asyncio.run(api.store.write(key, data, "image/jpeg", {}))
    else:
        _s3(api).put_object(Bucket=api.backend.bucket, Key=key, Body=data)


def test_each_image_belongs_to_its_uploader_and_is_a_404_to_everyone_else(owned):
    client = owned()
    mine = _upload(client, ALICE, "cat.jpg")
    image_id = mine["id"]
    assert image_id.startswith(ids.owner_tag("alice") + "-") and mine["status"] == "processed"
    assert (
        mine["name"] == "cat.jpg" and mine["variants"][0]["url"] == f"/images/{image_id}/{mine['variants'][0]['name']}"
    )
    before = _stored(client)
    assert any(k.startswith(f"processed/{image_id}/cat/") for k in before)

    # Bob: another user's image is exactly a missing id, on every route.
    missing = client.get(f"/images/{ids.new_id(tag=ids.owner_tag('bob'))}", headers=BOB)
    ownerless = client.get(f"/images/{ids.new_id()}", headers=BOB)
    for response in (
        client.get(f"/images/{image_id}", headers=BOB),
        client.get(f"/images/jobs/{image_id}", headers=BOB),
        client.delete(f"/images/{image_id}", headers=BOB),
        missing,
        ownerless,
    ):
        assert response.status_code == 404, response.text
        assert response.json() == missing.json() == {"status": 404, "detail": "no such image"}
    variant = client.get(f"/images/{image_id}/thumbnail", headers=BOB, follow_redirects=False)
    assert variant.status_code == 404 and "location" not in variant.headers
    assert _stored(client) == before  # Bob's DELETE deleted nothing

    # Alice and the admin see it; the admin may delete it.
    assert client.get(f"/images/{image_id}", headers=ALICE).json()["status"] == "processed"
    assert client.get(f"/images/jobs/{image_id}", headers=ALICE).status_code == 200
    assert client.get(f"/images/{image_id}/thumbnail", headers=ALICE, follow_redirects=False).status_code == 302
    assert client.get(f"/images/{image_id}", headers=ADMIN).json()["id"] == image_id
    assert client.delete(f"/images/{image_id}", headers=ADMIN).status_code == 204
    assert not [k for k in _stored(client) if image_id in k]
    assert client.get(f"/images/{image_id}", headers=ALICE).status_code == 404


def test_the_owner_is_recorded_with_the_upload_and_in_the_manifest(owned):
    client = owned()
    owner = "élodie@example.com"  # the sub may be an e-mail address, and not ASCII
    token = bearer(make_token(SECRET, owner))
    made = _upload(client, token, "sea.jpg")
    job = client.post("/images/async", files={"file": ("b.png", photo(90, 60, "PNG"), "image/png")}, headers=token)
    assert job.status_code == 202 and job.json()["job_id"].startswith(ids.owner_tag(owner) + "-")
    assert _read(client, made["source"]["key"])[1] == {"owner": "%C3%A9lodie@example.com"}  # ASCII, as S3 needs
    manifest = json.loads(_read(client, f"processed/{made['id']}/sea/manifest.json")[0])
    assert manifest["owner"] == owner
    assert owner not in made["id"] and "elodie" not in made["id"]  # keys and URLs carry the tag only


def test_an_ownerless_image_is_only_for_admins(owned):
    """Images made by an open API (or before owners) have 20-character ids and no owner."""
    client = owned()
    open_id = ids.new_id()
    _write(client, f"raw/{open_id}/old.jpg", photo(50, 50))
    assert client.get(f"/images/{open_id}", headers=ALICE).status_code == 404
    assert client.get(f"/images/{open_id}", headers=ADMIN).json()["status"] == "pending"
    assert open_id in [i["id"] for i in client.get("/images", headers=ADMIN).json()["items"]]
    assert open_id not in [i["id"] for i in client.get("/images", headers=ALICE).json()["items"]]


def test_listing_gives_the_callers_own_images_newest_first_a_page_at_a_time(owned, monkeypatch):
    from image_pipeline.api import app as app_module

    monkeypatch.setattr(app_module, "LIST_PAGE", 3)  # several listing requests per page
    client = owned()
    made = [_upload(client, ALICE, f"{n}.jpg", 120)["id"] for n in ("one", "two", "three")]
    bobs = _upload(client, BOB, "bob.jpg", 120)["id"]

    first = client.get("/images", params={"limit": 2}, headers=ALICE)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [i["id"] for i in body["items"]] == [made[2], made[1]]  # newest first
    assert [i["name"] for i in body["items"]] == ["three.jpg", "two.jpg"]
    assert {i["status"] for i in body["items"]} == {"processed"} and body["next_cursor"] == made[1]
    rest = client.get("/images", params={"limit": 2, "cursor": body["next_cursor"]}, headers=ALICE).json()
    assert [i["id"] for i in rest["items"]] == [made[0]] and rest["next_cursor"] is None
    assert [i["id"] for i in client.get("/images", headers=BOB).json()["items"]] == [bobs]
    everything = [i["id"] for i in client.get("/images", headers=ADMIN).json()["items"]]
    assert set(everything) == {*made, bobs}

    # Another owner's id is no cursor; nor is anything else.
    for cursor in (bobs, "raw/x", made[0] + "/"):
        refused = client.get("/images", params={"cursor": cursor}, headers=ALICE)
        assert refused.status_code == 400, cursor
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert client.get("/images").status_code == 401


def test_an_open_api_lists_images_only_where_the_gallery_is_on(fs_client, monkeypatch):
    """Open, a listing would hand anyone every id and so its DELETE: the same rule as /api/gallery."""
    client = fs_client()
    made = _upload(client, {}, "open.jpg")["id"]
    assert len(made) == ids.ID_LENGTH  # no owner, no tag
    monkeypatch.setattr(pages, "GALLERY_ENABLED", False)
    off = client.get("/images")
    assert off.status_code == 404 and "GALLERY=true" in off.json()["detail"] and made not in off.text
    monkeypatch.setattr(pages, "GALLERY_ENABLED", True)
    assert [i["id"] for i in client.get("/images").json()["items"]] == [made]


def test_pending_uploads_are_listed_as_pending_and_processed_ones_stay_listed_in_delete_mode(
    s3_client, s3, bucket, handler
):
    client = s3_client(**OWNED)
    grant = client.post(
        "/uploads", json={"filename": "new.jpg", "content_type": "image/jpeg", "size": 2000}, headers=ALICE
    ).json()
    sent = httpx.post(
        grant["upload"]["url"],
        data=grant["upload"]["fields"],
        files={"file": ("new.jpg", photo(300, 200), "image/jpeg")},
        timeout=30,
    )
    assert sent.status_code == 204, sent.text
    items = client.get("/images", headers=ALICE).json()["items"]
    assert [(i["id"], i["status"], i["name"]) for i in items] == [(grant["id"], "pending", "new.jpg")]

    LocalEventSource("unused", bucket).poll_once(s3, handler.lambda_handler)  # the pipeline, as on AWS
    assert client.get("/images", headers=ALICE).json()["items"][0]["status"] == "processed"

    deleting = s3_client(**OWNED, RAW_DISPOSITION="delete")
    gone_raw = _upload(deleting, ALICE, "kept.jpg")["id"]
    assert not [k for k in listing(s3, bucket) if k.startswith(f"raw/{gone_raw}/")]  # raw deleted once processed
    listed = deleting.get("/images", headers=ALICE).json()["items"]
    assert [(i["id"], i["status"]) for i in listed][:1] == [(gone_raw, "processed")]


def test_the_presigned_post_pins_the_key_and_the_owner(s3_client, s3, bucket, handler):
    client = s3_client(**OWNED)
    owner = "zoë"
    grant = client.post(
        "/uploads",
        json={"filename": "z.jpg", "content_type": "image/jpeg", "size": 5000},
        headers=bearer(make_token(SECRET, owner)),
    )
    assert grant.status_code == 201, grant.text
    body = grant.json()
    key = f"raw/{body['id']}/z.jpg"
    assert body["id"].startswith(ids.owner_tag(owner) + "-")
    fields = body["upload"]["fields"]
    conditions = decode_policy(fields)["conditions"]
    assert {"key": key} in conditions  # the exact key: the tag in it cannot be changed
    assert {"x-amz-meta-owner": "zo%C3%AB"} in conditions  # exact match: cannot be changed or left out
    assert fields["x-amz-meta-owner"] == "zo%C3%AB" and fields["key"] == key
    # moto does not enforce POST policies (S3 does): the form as signed is what is sent.
    assert (
        httpx.post(
            body["upload"]["url"], data=fields, files={"file": ("z.jpg", photo(80, 60), "image/jpeg")}, timeout=30
        ).status_code
        == 204
    )
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"owner": "zo%C3%AB"}
    LocalEventSource("unused", bucket).poll_once(s3, handler.lambda_handler)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"processed/{body['id']}/z/manifest.json")["Body"].read())
    assert manifest["owner"] == owner


def test_the_local_upload_form_pins_the_owner_too(fs_client, tmp_path):
    client = fs_client(**OWNED)
    grant = client.post(
        "/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size": 1000}, headers=ALICE
    ).json()
    fields = grant["upload"]["fields"]
    assert fields["x-amz-meta-owner"] == "alice" and grant["upload"]["url"] == "/uploads/local"

    def send(fields):
        return client.post(grant["upload"]["url"], data=fields, files={"file": ("a.jpg", photo(60, 40), "image/jpeg")})

    for changed in (
        {**fields, "x-amz-meta-owner": "bob"},
        {k: v for k, v in fields.items() if k != "x-amz-meta-owner"},
    ):
        refused = send(changed)
        assert refused.status_code == 403, refused.text
    assert not (tmp_path / "images" / "raw").exists() or not list((tmp_path / "images" / "raw").rglob("*.jpg"))
    assert send(fields).status_code == 204
    assert wait_for(client, grant["status_url"], headers=ALICE)["status"] == "processed"


def test_the_gallery_shows_the_callers_own_images(owned, monkeypatch):
    monkeypatch.setattr(pages, "GALLERY_ENABLED", True)
    client = owned()
    alices = _upload(client, ALICE, "a.jpg")["id"]
    bobs = _upload(client, BOB, "b.jpg")["id"]
    assert [i["id"] for i in client.get("/api/gallery", headers=ALICE).json()["items"]] == [alices]
    assert [i["id"] for i in client.get("/api/gallery", headers=BOB).json()["items"]] == [bobs]
    assert {i["id"] for i in client.get("/api/gallery", headers=ADMIN).json()["items"]} == {alices, bobs}
    assert client.get("/api/gallery").status_code == 401
    other = client.get("/api/gallery", params={"cursor": f"processed/{bobs}/b/manifest.json"}, headers=ALICE)
    assert other.status_code == 400


# --- 401s -----------------------------------------------------------------------------------


def _unsigned(claims: dict) -> str:
    """An `alg: none` token (no signature), as an attacker writes one."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _signed(**changes) -> str:
    """A token valid for the API below but for `changes` (None: the claim left out)."""
    claims = {"sub": "alice", "iss": "https://id.test/", "aud": "images", "exp": int(time.time()) + 600, **changes}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("name", "headers", "words"),
    [
        ("missing", {}, "bearer token is required"),
        ("not bearer", {"Authorization": "Basic YWxpY2U6eA=="}, "Bearer <token>"),
        ("garbage", bearer("not.a.token"), "not valid"),
        ("expired", bearer(make_token(SECRET, "alice", ttl_s=-120)), "expired"),
        ("other secret", bearer(make_token("another-secret-of-at-least-32-bytes-xyz", "alice")), "not valid"),
        (
            "alg none",
            bearer(
                _unsigned({"sub": "alice", "iss": "https://id.test/", "aud": "images", "exp": int(time.time()) + 600})
            ),
            "not valid",
        ),
        ("no exp", bearer(_signed(exp=None)), "'exp'"),
        ("no sub", bearer(_signed(sub=None)), "'sub'"),
        ("empty sub", bearer(_signed(sub=" ")), "'sub'"),
        ("wrong aud", bearer(_signed(aud="other")), "aud"),
        ("wrong iss", bearer(_signed(iss="https://evil.test/")), "iss"),
        ("not yet", bearer(_signed(nbf=int(time.time()) + 600)), "not valid yet"),
    ],
)
def test_tokens_that_are_missing_or_not_valid_are_401_and_store_nothing(fs_client, tmp_path, name, headers, words):
    client = fs_client(**OWNED, JWT_ISSUER="https://id.test/", JWT_AUDIENCE="images")
    for response in (
        client.post("/images", files={"file": ("a.jpg", photo(60, 40), "image/jpeg")}, headers=headers),
        client.post("/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size": 10}, headers=headers),
        client.get("/images", headers=headers),
        client.delete(f"/images/{ids.new_id(tag=ids.owner_tag('alice'))}", headers=headers),
    ):
        assert response.status_code == 401, (name, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"].startswith('Bearer realm="image-pipeline"')
        assert words in response.json()["detail"]
    assert not (tmp_path / "images" / "raw").exists()
    assert client.get("/images", headers=bearer(_signed())).status_code == 200


def test_a_deployment_without_settings_refuses_every_api_route(fs_client):
    """API_AUTH unset is jwt; with no secret or key set and no API Gateway event there is nobody."""
    client = fs_client(API_AUTH="")
    assert client.post("/images", files={"file": ("a.jpg", photo(60, 40), "image/jpeg")}).status_code == 401
    assert client.get("/images", headers=ALICE).status_code == 401  # nobody here verifies a token
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_settings_for_tokens_are_checked_at_start_up():
    from image_pipeline.api.settings import ApiSettings
    from image_pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        ApiSettings.from_env(
            {
                "API_AUTH": "maybe",
                "JWT_SECRET": "short",
                "JWKS_URL": "ftp://keys",
                "ADMIN_SCOPE": "a b",
                "ALLOWED_HOSTS": "https://x.example, *",
                "PUBLIC_URL": "api.example.com",
            },
            need_bucket=False,
        )
    message = str(caught.value)
    for words in (
        "API_AUTH='maybe'",
        "not both",
        "at least 32 bytes",
        "JWKS_URL='ftp://keys'",
        "ADMIN_SCOPE",
        "ALLOWED_HOSTS: 'https://x.example'",
        "ALLOWED_HOSTS: '*'",
        "PUBLIC_URL",
    ):
        assert words in message
    with pytest.raises(ConfigError, match="apply to API_AUTH=jwt"):
        ApiSettings.from_env({"API_AUTH": "open", "JWT_SECRET": SECRET}, need_bucket=False)
    assert ApiSettings.from_env({}, need_bucket=False).auth == "jwt"  # unset: never open
    assert SECRET not in repr(ApiSettings.from_env({"JWT_SECRET": SECRET}, need_bucket=False))  # not in logs


# --- an identity provider's keys (JWKS) over real HTTP ----------------------------------------


@pytest.fixture
def identity_provider():
    """An RSA key pair whose public half is served as a JWKS from a local HTTP server."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
    fetched = []

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self):
            fetched.append(self.path)
            self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    yield key, url, fetched
    server.shutdown()
    server.server_close()


def test_tokens_are_verified_against_a_jwks(fs_client, identity_provider):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, url, fetched = identity_provider
    client = fs_client(API_AUTH="jwt", JWKS_URL=url, JWT_ISSUER="https://id.test/", JWT_AUDIENCE="images")
    now = int(time.time())
    claims = {"sub": "dana", "iss": "https://id.test/", "aud": "images", "exp": now + 600}

    def rs256(claims, signer=key, kid="k1"):
        return bearer(jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid}))

    made = client.post("/images", files={"file": ("a.jpg", photo(80, 60), "image/jpeg")}, headers=rs256(claims))
    assert made.status_code == 201, made.text
    assert made.json()["id"].startswith(ids.owner_tag("dana") + "-")
    assert fetched == ["/.well-known/jwks.json"]

    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Algorithm confusion: HS256 "signed" with the public key (which anyone has) as the secret.
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "k1"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    mac = base64.urlsafe_b64encode(hmac.new(public_pem, head + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
    for headers in (
        rs256(claims, signer=impostor),
        rs256({**claims, "aud": "other"}),
        rs256({**claims, "iss": "https://evil.test/"}),
        rs256({**claims, "exp": now - 300}),
        rs256(claims, kid="unknown"),
        bearer((head + b"." + payload + b"." + mac).decode()),
        bearer(_unsigned(claims)),
    ):
        refused = client.get("/images", headers=headers)
        assert refused.status_code == 401, refused.text
    assert client.get("/images", headers=rs256(claims)).json()["items"][0]["id"] == made.json()["id"]
