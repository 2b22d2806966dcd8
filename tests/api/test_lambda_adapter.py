"""The API function's entry point (Mangum) as API Gateway's HTTP API invokes it (payload 2.0),
in a fresh interpreter as on Lambda, against moto server: the caller comes from the claims API
Gateway's JWT authorizer verified (`requestContext.authorizer.jwt.claims`), or from its IAM
authorization (`requestContext.authorizer.iam`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from image_pipeline import ids

from .conftest import decode_policy

CODE = r"""
import base64, json, sys
from image_pipeline.api.lambda_function import handler
from tests.images import photo

DOMAIN = "abc.execute-api.us-east-1.amazonaws.com"

def event(method, path, body=None, authorizer=None, query="", content_type="application/json", host=DOMAIN):
    encoded = isinstance(body, bytes)
    context = {"http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9",
                        "userAgent": "test"}, "domainName": DOMAIN, "stage": "$default", "requestId": "r",
               "accountId": "1", "apiId": "abc"}
    if authorizer is not None:
        context["authorizer"] = authorizer
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"host": host, "content-type": content_type, "x-forwarded-proto": "https",
                    "x-forwarded-port": "443"},
        "requestContext": context,
        "body": base64.b64encode(body).decode() if encoded else json.dumps(body) if body is not None else None,
        "isBase64Encoded": encoded,
    }

def jwt(**claims):
    return {"jwt": {"claims": claims, "scopes": None}}

def multipart(name, data):
    return (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name.encode() + b"\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--b--\r\n")

out = {}
if sys.argv[1] == "jwt":
    alice, bob = jwt(sub="alice", scope="openid email"), jwt(sub="bob")
    admin = jwt(sub="carol", scp="[images:read images:admin]")  # how HTTP API passes an array claim
    out["grant"] = handler(event("POST", "/uploads", {"filename": "a.jpg", "content_type": "image/jpeg", "size": 1234},
                                 alice), None)
    out["anonymous"] = handler(event("POST", "/uploads", {"filename": "a.jpg", "content_type": "image/jpeg",
                                                          "size": 1234}), None)
    made = handler(event("POST", "/images", multipart("cat.jpg", photo(320, 240)), alice,
                         content_type="multipart/form-data; boundary=b"), None)
    out["made"] = made
    image_id = json.loads(made["body"])["id"]
    for name, who in (("alice", alice), ("bob", bob), ("admin", admin)):
        out["get_" + name] = handler(event("GET", f"/images/{image_id}", authorizer=who), None)
        out["list_" + name] = handler(event("GET", "/images", authorizer=who), None)
    out["bad_id"] = handler(event("GET", "/images/..%2F", authorizer=alice), None)
    out["rebound"] = handler(event("GET", f"/images/{image_id}", authorizer=alice, host="rebind.evil.example"), None)
else:
    role = {"iam": {"accessKey": "ASIA", "accountId": "123456789012", "callerId": "AROA:build-42",
                    "userArn": "arn:aws:sts::123456789012:assumed-role/uploader/build-42", "userId": "AROA:build-42"}}
    out["grant"] = handler(event("POST", "/uploads", {"filename": "a.jpg", "content_type": "image/jpeg", "size": 9},
                                 role), None)
    out["token_only"] = handler(event("POST", "/uploads", {"filename": "a.jpg", "content_type": "image/jpeg",
                                                           "size": 9}, jwt(sub="alice")), None)
print(json.dumps(out))
"""


def _run(mode: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CODE, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _body(response: dict) -> dict:
    """Mangum base64-encodes bodies of types it does not know as text (problem+json); API Gateway
    decodes them for the client."""
    body = response["body"]
    return json.loads(base64.b64decode(body) if response.get("isBase64Encoded") else body)


def test_mangum_entry_point_takes_the_owner_from_the_jwt_authorizers_claims(moto_server, bucket, s3):
    # No API_AUTH, no secret: the deployed default, which trusts only API Gateway's verified claims.
    env = {k: v for k, v in os.environ.items() if k not in ("API_AUTH", "JWT_SECRET", "JWKS_URL")}
    out = _run("jwt", {**env, "BUCKET_NAME": bucket, "AWS_ENDPOINT_URL_S3": moto_server})

    grant = out["grant"]
    assert grant["statusCode"] == 201, grant
    body = _body(grant)
    alice = ids.owner_tag("alice")
    assert body["id"].startswith(alice + "-") and body["status_url"] == f"/images/{body['id']}"
    fields = body["upload"]["fields"]
    assert fields["key"].startswith(f"raw/{body['id']}/") and fields["x-amz-meta-owner"] == "alice"
    assert {"x-amz-meta-owner": "alice"} in decode_policy(fields)["conditions"]

    anonymous = out["anonymous"]  # a request that did not pass the authorizer (a misconfigured route)
    assert anonymous["statusCode"] == 401
    assert anonymous["headers"]["content-type"].startswith("application/problem+json")
    assert anonymous["headers"]["www-authenticate"].startswith("Bearer")

    made = _body(out["made"])
    assert out["made"]["statusCode"] == 201 and made["status"] == "processed"
    manifest = s3.get_object(Bucket=bucket, Key=f"processed/{made['id']}/cat/manifest.json")["Body"].read()
    assert json.loads(manifest)["owner"] == "alice"
    assert s3.head_object(Bucket=bucket, Key=f"raw/{made['id']}/cat.jpg")["Metadata"] == {"owner": "alice"}

    assert out["get_alice"]["statusCode"] == 200 and _body(out["get_alice"])["id"] == made["id"]
    assert out["get_bob"]["statusCode"] == 404 and _body(out["get_bob"])["detail"] == "no such image"
    assert out["get_admin"]["statusCode"] == 200  # scp "[images:read images:admin]"
    assert [i["id"] for i in _body(out["list_alice"])["items"]] == [made["id"]]
    assert _body(out["list_bob"])["items"] == []
    assert made["id"] in [i["id"] for i in _body(out["list_admin"])["items"]]
    assert out["bad_id"]["statusCode"] == 404
    assert out["rebound"]["statusCode"] == 400  # not the domain API Gateway received it on


def test_mangum_entry_point_with_iam_authorization_owns_by_principal(moto_server, bucket):
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "JWKS_URL")}
    out = _run("iam", {**env, "API_AUTH": "iam", "BUCKET_NAME": bucket, "AWS_ENDPOINT_URL_S3": moto_server})
    grant = out["grant"]
    assert grant["statusCode"] == 201, grant
    body = _body(grant)
    role = "arn:aws:sts::123456789012:assumed-role/uploader"  # the role, whatever the session's name
    assert body["id"].startswith(ids.owner_tag(role) + "-")
    assert body["upload"]["fields"]["x-amz-meta-owner"] == role
    assert out["token_only"]["statusCode"] == 401  # IAM mode: claims are not an IAM principal
