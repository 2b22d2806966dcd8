"""Moderation through the API, over a directory and over moto server's S3, with really signed
tokens: an upload the check holds is `held` to its owner (404 to others), publishes nothing and
makes nothing on request; the images:admin scope lists the queue (newest first, with a preview
link) and approves or rejects; everyone else cannot decide."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from image_pipeline.api.auth import make_token
from tests.images import photo

from .conftest import api_of

SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"
HELD = {"API_AUTH": "jwt", "JWT_SECRET": SECRET, "MODERATION": "local", "MODERATION_THRESHOLD": "0"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ALICE = bearer(make_token(SECRET, "alice"))
BOB = bearer(make_token(SECRET, "bob"))
ADMIN = bearer(make_token(SECRET, "carol", scope="openid images:admin"))


@pytest.fixture(params=["filesystem", "s3"])
def held_api(request, fs_client):
    if request.param == "filesystem":
        return fs_client(**HELD)
    return request.getfixturevalue("s3_client")(**HELD)


def upload(client, headers=ALICE, name="a.jpg") -> dict:
    made = client.post("/images", files={"file": (name, photo(320, 240), "image/jpeg")}, headers=headers)
    assert made.status_code == 201, made.text
    return made.json()


def keys(client, prefix: str) -> list[str]:
    """The keys under `prefix`, read beside the app (its S3 client lives on its own loop)."""
    api = api_of(client)
    if api.backend.kind == "filesystem":

        async def listed():
            return [o.key for o in await api.store.list(prefix)]

        return asyncio.run(listed())
    import boto3

    s3 = boto3.client("s3", endpoint_url=api.backend.endpoint_url)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=api.backend.bucket, Prefix=prefix).get("Contents", [])]


def test_a_held_image_is_held_to_its_owner_and_nothing_of_it_is_served(held_api):
    body = upload(held_api)
    image_id = body["id"]
    assert body["status"] == "held" and body["variants"] == [] and body["error_code"] is None
    assert held_api.get(f"/images/{image_id}", headers=ALICE).json()["status"] == "held"
    assert held_api.get(f"/images/{image_id}", headers=BOB).status_code == 404
    for leaf in ("medium", "w640.webp", "w640"):
        assert held_api.get(f"/images/{image_id}/{leaf}", headers=ALICE, follow_redirects=False).status_code == 404
    assert keys(held_api, "processed/") == []


def test_the_queue_is_for_admins_newest_first_with_a_preview(held_api):
    first, second = upload(held_api, name="one.jpg")["id"], upload(held_api, BOB, name="two.jpg")["id"]
    assert held_api.get("/images?status=held", headers=ALICE).status_code == 403
    assert held_api.get("/images?status=nope", headers=ADMIN).status_code == 400
    page = held_api.get("/images?status=held&limit=1", headers=ADMIN).json()
    (item,) = page["items"]
    assert item["id"] == second and item["labels"] == ["nsfw"] and item["reason"] == "flagged"
    assert page["next_cursor"] == second
    rest = held_api.get(f"/images?status=held&cursor={page['next_cursor']}", headers=ADMIN).json()
    assert [i["id"] for i in rest["items"]] == [first] and rest["next_cursor"] is None
    preview = item["preview_url"]
    got = held_api.get(preview) if preview.startswith("/") else httpx.get(preview)  # local link, or presigned S3
    assert got.status_code == 200 and got.content[:2] == b"\xff\xd8"  # the held upload itself, for the reviewer


def test_approve_publishes_and_the_same_decision_answers_the_same(held_api):
    image_id = upload(held_api)["id"]
    url = f"/images/{image_id}/review"
    assert held_api.post(url, json={"decision": "approve"}, headers=ALICE).status_code == 403  # the owner cannot
    assert held_api.post(url, json={"decision": "approve"}, headers=BOB).status_code == 404
    assert held_api.post(url, json={"decision": "maybe"}, headers=ADMIN).status_code == 400
    assert held_api.post(url, json=["approve"], headers=ADMIN).status_code == 400
    first = held_api.post(url, json={"decision": "approve"}, headers=ADMIN)
    assert first.status_code == 200 and first.json()["status"] == "processed"
    again = held_api.post(url, json={"decision": "approve"}, headers=ADMIN)
    assert again.status_code == 200 and again.json() == first.json()
    assert held_api.post(url, json={"decision": "reject"}, headers=ADMIN).status_code == 409
    image = held_api.get(f"/images/{image_id}", headers=ALICE).json()
    assert image["status"] == "processed" and {v["name"] for v in image["variants"]} >= {"thumbnail", "medium"}
    assert held_api.get("/images?status=held", headers=ADMIN).json()["items"] == []


def test_reject_removes_the_upload(held_api):
    image_id = upload(held_api)["id"]
    url = f"/images/{image_id}/review"
    first = held_api.post(url, json={"decision": "reject"}, headers=ADMIN)
    assert first.status_code == 200 and first.json()["status"] == "rejected"
    assert held_api.post(url, json={"decision": "reject"}, headers=ADMIN).json() == first.json()
    assert held_api.post(url, json={"decision": "approve"}, headers=ADMIN).status_code == 409
    assert held_api.get(f"/images/{image_id}", headers=ALICE).status_code == 404
    assert keys(held_api, "raw/") == [] and keys(held_api, "processed/") == []


def test_a_decision_on_an_image_never_held_is_a_conflict(fs_client):
    client = fs_client(**{**HELD, "MODERATION_THRESHOLD": "1"})
    image_id = upload(client)["id"]
    assert client.get(f"/images/{image_id}", headers=ALICE).json()["status"] == "processed"
    for decision in ("approve", "reject"):
        assert client.post(f"/images/{image_id}/review", json={"decision": decision}, headers=ADMIN).status_code == 409


def test_a_local_preview_link_is_the_permission_and_expires(fs_client):
    client = fs_client(**HELD)
    upload(client)
    preview = client.get("/images?status=held", headers=ADMIN).json()["items"][0]["preview_url"]
    assert client.get(preview).status_code == 200
    assert client.get(preview[:-4] + "0000").status_code == 404  # another signature
    forged = preview.replace("raw%2F", "raw%2F..%2F")
    assert client.get(forged).status_code == 404
    import re

    expired = re.sub(r"expires=\d+", "expires=1", preview)
    assert client.get(expired).status_code == 404
