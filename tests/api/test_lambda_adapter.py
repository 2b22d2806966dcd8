"""The API function's entry point (Mangum) as API Gateway's HTTP API invokes it (payload 2.0),
in a fresh interpreter as on Lambda, against moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CODE = r"""
import json
from image_pipeline.api.lambda_function import handler

def event(method, path, body=None):
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "abc.execute-api.us-east-1.amazonaws.com", "content-type": "application/json",
                    "x-forwarded-proto": "https", "x-forwarded-port": "443"},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9",
                                    "userAgent": "test"}, "domainName": "abc.execute-api.us-east-1.amazonaws.com",
                           "stage": "$default", "requestId": "r", "accountId": "1", "apiId": "abc"},
        "body": json.dumps(body) if body is not None else None, "isBase64Encoded": False,
    }

out = []
grant = handler(event("POST", "/uploads", {"filename": "a.jpg", "content_type": "image/jpeg", "size": 1234}), None)
out.append(grant)
image_id = json.loads(grant["body"])["id"]
out.append(handler(event("GET", f"/images/{image_id}"), None))  # twice on the same container: the clients stay open
out.append(handler(event("GET", "/images/..%2F"), None))
print(json.dumps(out))
"""


def test_mangum_entry_point_answers_api_gateway_events(moto_server, bucket):
    env = {**os.environ, "BUCKET_NAME": bucket, "AWS_ENDPOINT_URL_S3": moto_server}
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grant, status, bad = json.loads(done.stdout.strip().splitlines()[-1])
    assert grant["statusCode"] == 201
    body = json.loads(grant["body"])
    assert body["status_url"].startswith("https://abc.execute-api.us-east-1.amazonaws.com/images/")
    assert body["upload"]["fields"]["key"].startswith(f"raw/{body['id']}/")
    assert status["statusCode"] == 404  # nothing uploaded yet: a problem+json 404
    assert status["headers"]["content-type"].startswith("application/problem+json")
    assert bad["statusCode"] == 404
