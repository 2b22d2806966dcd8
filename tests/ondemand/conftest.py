"""On-demand outputs through the CDN's miss function, on moto server: a real Runtime (settings,
loop, S3 client, service), the real processor, function URL events as Lambda delivers them."""

from __future__ import annotations

import base64
import os

import pytest

from image_pipeline.cli import LocalContext
from image_pipeline.ondemand import OnDemand, OnDemandSettings
from image_pipeline.ondemand.miss import MissFunction
from image_pipeline.runtime import Runtime
from image_pipeline.service import ObjectRef
from image_pipeline.settings import Settings

KEY = "s" * 40


def url_event(path: str, query: str = "", method: str = "GET") -> dict:
    """A Lambda function URL request (payload 2.0), as CloudFront's origin request arrives."""
    return {
        "version": "2.0",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"host": "abc.lambda-url.us-east-1.on.aws"},
        "requestContext": {"http": {"method": method, "path": path}},
        "isBase64Encoded": False,
    }


def body(response: dict) -> bytes:
    assert response.get("isBase64Encoded"), response
    return base64.b64decode(response["body"])


@pytest.fixture
def cdn(moto_server, bucket):
    """A factory: (miss function, runtime) over the test bucket with extra settings; closed after."""
    made = []

    def build(endpoint: str | None = None, **env: str) -> MissFunction:
        environ = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint or moto_server, "SIGNING_KEY": KEY, **env}
        runtime = Runtime(Settings.from_env(environ))
        miss = MissFunction(runtime, OnDemand(runtime.service, OnDemandSettings.from_env(environ)), bucket)
        made.append(miss)
        return miss

    yield build
    for miss in made:
        miss.close()


def process(miss: MissFunction, bucket: str, key: str):
    """The upload's pipeline run (what the S3 event does), on the same runtime."""
    return miss.runtime.handle(ObjectRef(bucket, key))


def call(miss: MissFunction, path: str, query: str = "", method: str = "GET") -> dict:
    return miss(url_event(path, query, method), LocalContext())
