"""`serve --storage` (the API over a directory, its own worker): an engine that never answers is
tried again, each try counted, and the upload ends held as moderation_unavailable, never published."""

from __future__ import annotations

import os
import time

from litestar.testing import TestClient

from image_pipeline.api import create_app
from image_pipeline.api.settings import ApiSettings
from tests.images import photo


def test_the_local_worker_retries_then_holds(tmp_path, rekognition):
    rekognition.answer(500)
    env = {
        **os.environ,
        "API_AUTH": "open",
        "ALLOWED_HOSTS": "api.test",
        "MODERATION": "rekognition",
        "AWS_ENDPOINT_URL_REKOGNITION": rekognition.url,
        "S3_MAX_ATTEMPTS": "1",
        "MODERATION_MAX_ATTEMPTS": "3",
    }
    app = create_app(ApiSettings.from_env(env, need_bucket=False), storage_dir=tmp_path / "images")
    with TestClient(app=app, base_url="http://api.test") as client:
        job = client.post("/images/async", files={"file": ("a.jpg", photo(320, 240), "image/jpeg")}).json()
        deadline = time.monotonic() + 60
        while (body := client.get(job["status_url"]).json())["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
    assert body["status"] == "held" and body["error_code"] == "moderation_unavailable"
    assert len(rekognition.requests) == 3
    assert not (tmp_path / "images" / "processed").exists() or not any((tmp_path / "images" / "processed").rglob("*.*"))
