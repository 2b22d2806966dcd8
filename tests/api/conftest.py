"""The upload API in-process through Litestar's TestClient (real HTTP semantics, real routing),
over moto server's S3 or a directory (FileSystemStorage). Uploads to S3 are real multipart POSTs to
moto over the network, as a browser sends them."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import pytest

BASE = "http://api.test"
HOST = "api.test"
# The tests of unauthenticated behaviour ask for an open API by name, as a deployment must; the
# owner tests (test_owners.py) pass API_AUTH=jwt and a secret. The test client's Host is allowed.
OPEN = {"API_AUTH": "open", "ALLOWED_HOSTS": HOST}


def api_settings(**env: str):
    from image_pipeline.api.settings import ApiSettings

    return ApiSettings.from_env({**os.environ, **OPEN, **env}, need_bucket=False)


def _clients(build_app):
    """A factory of test clients over `build_app(**env)`, each closed when the test ends."""
    from litestar.testing import TestClient

    opened = []

    def make(*args, **env: str):
        client = TestClient(app=build_app(*args, **env), base_url=BASE)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def fs_client(tmp_path):
    """A factory: the API over a directory, optionally with extra environment settings."""
    from image_pipeline.api import create_app

    def build(directory=None, **env: str):
        return create_app(api_settings(**env), storage_dir=directory or tmp_path / "images")

    yield from _clients(build)


@pytest.fixture
def s3_client(bucket, moto_server):
    """A factory: the API over the test bucket on moto server."""
    from image_pipeline.api import create_app

    def build(**env: str):
        return create_app(api_settings(BUCKET_NAME=bucket, **env), endpoint_url=moto_server)

    yield from _clients(build)


def api_of(client):
    return client.app.state.api


def wait_for(client, status_url: str, timeout: float = 60, headers: dict | None = None) -> dict:
    """Poll the status URL until the image is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(status_url, headers=headers).json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def decode_policy(fields: dict) -> dict:
    return json.loads(base64.b64decode(fields["policy"]))


def listing(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


class Recording:
    """A store that records every call it passes on (to prove a route made none)."""

    def __init__(self, store) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)

        return call


def unique_name() -> str:
    return f"photo-{uuid.uuid4().hex[:6]}.jpg"
