"""One real S3 API for the whole suite: moto's ThreadedMotoServer on 127.0.0.1.

boto3, aioboto3 and litestar-storages' S3Storage all reach it by endpoint URL, exactly as they
reach AWS, MinIO or LocalStack. (moto's `mock_aws` decorator would not intercept aioboto3.)
The environment is set before anything imports the handler, which reads it at cold start.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from hypothesis import settings as hypothesis_settings

# CI explores the same examples every run (a failure there is reproducible); locally they vary.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ENDPOINT = f"http://127.0.0.1:{_free_port()}"
for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
    os.environ.pop(name, None)
os.environ.update(
    AWS_ENDPOINT_URL_S3=ENDPOINT,
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    POWERTOOLS_TRACE_DISABLED="true",
    POWERTOOLS_METRICS_NAMESPACE="ImagePipelineTest",
    POWERTOOLS_SERVICE_NAME="image-pipeline",
    S3_MAX_ATTEMPTS="2",
)
EVENTS = Path(__file__).resolve().parent.parent / "events"


@pytest.fixture(scope="session")
def moto_server():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    host, port = ENDPOINT.removeprefix("http://").split(":")
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    yield ENDPOINT
    server.stop()


@pytest.fixture
def s3(moto_server):
    import boto3

    return boto3.client("s3", endpoint_url=moto_server)


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def handler(moto_server):
    """The real handler module, with its cold-start runtime (closed when the suite ends)."""
    import image_pipeline.handler as module

    yield module
    module.runtime.close()


@pytest.fixture
def settings_env(handler):
    """Swap the handler's runtime for one built from extra environment variables."""
    from image_pipeline.runtime import Runtime
    from image_pipeline.settings import Settings

    original = handler.runtime
    made = []

    def use(**env: str):
        runtime = Runtime(Settings.from_env({**os.environ, **env}))
        made.append(runtime)
        handler.runtime = runtime
        return runtime

    yield use
    handler.runtime = original
    for runtime in made:
        runtime.close()


@pytest.fixture
def context():
    from image_pipeline.cli import LocalContext

    return LocalContext()


def load_event(name: str, *, bucket: str | None = None, keys: list[str] | None = None, etag: str | None = None) -> dict:
    """A file from events/, with only its bucket and key(s) changed (keys URL-encoded as S3 does)."""
    event = json.loads((EVENTS / name).read_text())

    def retarget(obj: dict, key: str | None, encode: bool) -> None:
        if bucket:
            obj["bucket"]["name"] = bucket
            if "arn" in obj["bucket"]:
                obj["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        if key is not None:
            obj["object"]["key"] = quote_plus(key, safe="/") if encode else key
        if etag is not None:
            obj["object"]["eTag" if encode else "etag"] = etag

    if "detail" in event:
        retarget(event["detail"], keys[0] if keys else None, encode=False)
        return event
    records = event["Records"]
    if keys:
        records = [json.loads(json.dumps(records[0])) for _ in keys]
    for i, record in enumerate(records):
        key = keys[i] if keys else None
        if "body" in record:
            body = json.loads(record["body"])
            retarget(body["Records"][0]["s3"], key, encode=True)
            record["body"] = json.dumps(body)
            record["messageId"] = f"message-{i}"
        else:
            retarget(record["s3"], key, encode=True)
    event["Records"] = records
    return event
