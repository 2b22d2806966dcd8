"""The CDN's shape as template.yaml deploys it (Cdn=true: stacks/cdn.yaml, nested), run over real
parts: the template's own CloudFront Function (in node), its cache key, origin request policy,
origin group and error caching read from the rendered template and applied by a small edge model below; the bucket on
moto server as the primary origin; and as the failover origin the template's on-demand entry point
(`Handler`) in a fresh interpreter started with the environment the template gives it, answering
function URL events (payload 2.0) as Lambda would.

What the model stands in for is CloudFront's own behaviour, as documented: a cache keyed by the
URI alone, failover on the group's status codes, and errors kept for max(max-age,
ErrorCachingMinTTL) except a no-store 404. What it proves is that the template's pieces fit: a
first request makes and stores the output, every later one is served without invoking anything,
and neither a refused signature nor an image still being processed is remembered."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import parse_qsl

import pytest

from image_pipeline.ondemand.signing import sign
from tests.cfn import deploy
from tests.cloudfront import viewer_request_uris
from tests.images import decode, photo
from tests.ondemand.conftest import process
from tests.reliability.faultproxy import FaultProxy

pytest.importorskip("cfnlint.decode.cfn_yaml")

KEY = "0123456789abcdef" * 4
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
SAFARI_16 = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
CONTAINER = r"""
import json, os, sys
answers = os.fdopen(os.dup(1), "w")  # responses on the real stdout; Powertools' logs and EMF go to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
from image_pipeline.lambda_context import LocalContext
module, _, name = sys.argv[1].rpartition(".")
handler = getattr(__import__(module, fromlist=[name]), name)
for line in sys.stdin:
    answers.write(json.dumps(handler(json.loads(line), LocalContext(timeout_s=int(sys.argv[2])))) + "\n")
    answers.flush()
"""


class Container:
    """The on-demand function as Lambda runs it: one warm interpreter, cold-started on the template's
    environment, one function URL event at a time."""

    def __init__(self, handler: str, timeout: int, env: dict[str, str]) -> None:
        self.invocations = 0
        self.events: list[dict] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTAINER, handler, str(timeout)],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def __call__(self, event: dict) -> dict:
        self.invocations += 1
        self.events.append(event)
        self.proc.stdin.write(json.dumps(event) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the function's interpreter died"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    served_by: str  # "edge" | "bucket" | "function"


@dataclass
class Edge:
    """One CloudFront edge location of the distribution the template describes."""

    distribution: dict
    negotiate_code: str
    forwarded_query: list[str]
    s3: object
    bucket: str
    function: Container
    storage: FaultProxy  # every S3 request the function makes passes (unharmed) through it, logged
    cache: dict[str, Answer] = field(default_factory=dict)

    def get(self, path: str, query: str = "", accept: str | None = None) -> Answer:
        (behaviour,) = [b for b in self.distribution["CacheBehaviors"] if fnmatchcase(path[1:], b["PathPattern"])]
        headers = {} if accept is None else {"Accept": accept}
        (uri,) = viewer_request_uris(self.negotiate_code, [(path, headers)])  # FunctionAssociations: viewer-request
        if uri in self.cache:  # the cache policy keys on nothing but the URI
            cached = self.cache[uri]
            return Answer(cached.status, cached.headers, cached.body, "edge")
        (group,) = [g for g in self.distribution["OriginGroups"]["Items"] if g["Id"] == behaviour["TargetOriginId"]]
        failover = set(group["FailoverCriteria"]["StatusCodes"]["Items"])
        answer = self._bucket(uri)
        if answer.status in failover:
            pairs = parse_qsl(query, keep_blank_values=True)  # the origin request policy's query strings only
            kept = "&".join(f"{k}={v}" for k, v in pairs if k in self.forwarded_query)
            answer = self._function(uri, kept)
        if self._ttl(answer) > 0:
            self.cache[uri] = answer
        return answer

    def _bucket(self, uri: str) -> Answer:
        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=uri[1:])
        except self.s3.exceptions.NoSuchKey:
            return Answer(403, {}, b"", "bucket")  # CloudFront's OAC has no ListBucket: a missing key is a 403
        return Answer(
            200,
            {"Content-Type": got["ContentType"], "Cache-Control": got.get("CacheControl", "")},
            got["Body"].read(),
            "bucket",
        )

    def _function(self, uri: str, query: str) -> Answer:
        event = {
            "version": "2.0",
            "rawPath": uri,
            "rawQueryString": query,
            "headers": {"host": "abc.lambda-url.us-east-1.on.aws"},  # no viewer header is forwarded
            "requestContext": {"http": {"method": "GET", "path": uri}},
            "isBase64Encoded": False,
        }
        response = self.function(event)
        body = response.get("body", "").encode()
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body)
        return Answer(response["statusCode"], response.get("headers", {}), body, "function")

    def _ttl(self, answer: Answer) -> int:
        control = answer.headers.get("Cache-Control", "")
        age = re.search(r"max-age=(\d+)", control)
        max_age = int(age.group(1)) if age else None
        if answer.status < 400:
            return 0 if "no-store" in control else (max_age if max_age is not None else 86400)
        if answer.status in (404, 410, 414, 501) and "no-store" in control:
            return 0
        minimum = {e["ErrorCode"]: e["ErrorCachingMinTTL"] for e in self.distribution.get("CustomErrorResponses", [])}
        return max(max_age or 0, minimum.get(answer.status, 10))


@pytest.fixture
def edge(moto_server, s3, bucket):
    stack = deploy("template.yaml", {"Cdn": "true", "SigningKey": KEY}).nested["CdnStack"]  # stacks/cdn.yaml
    (distribution,) = [p["DistributionConfig"] for p in stack.of_type("AWS::CloudFront::Distribution").values()]
    (negotiate,) = stack.of_type("AWS::CloudFront::Function").values()
    (policy,) = stack.of_type("AWS::CloudFront::OriginRequestPolicy").values()
    (function,) = [p for p in stack.of_type("AWS::Serverless::Function").values() if "FunctionUrlConfig" in p]
    env = {k: v if isinstance(v, str) else "example-stack" for k, v in function["Environment"]["Variables"].items()}
    env["BUCKET_NAME"] = bucket
    env.update(
        {
            k: os.environ[k]
            for k in (
                "PATH",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION",
                "POWERTOOLS_TRACE_DISABLED",
            )
            if k in os.environ
        }
    )
    storage = FaultProxy(upstream=moto_server).start()
    env["AWS_ENDPOINT_URL_S3"] = storage.url
    container = Container(function["Handler"], function["Timeout"], env)
    forwarded = policy["OriginRequestPolicyConfig"]["QueryStringsConfig"]["QueryStrings"]

    def at_a_new_location() -> Edge:  # an empty cache, the same distribution and function
        return Edge(distribution, negotiate["FunctionCode"], forwarded, s3, bucket, container, storage)

    yield at_a_new_location
    container.close()
    storage.stop()


def test_a_first_request_makes_the_output_and_no_later_request_invokes_anything(s3, bucket, cdn, edge):
    s3.put_object(Bucket=bucket, Key="raw/shop/shoe.jpg", Body=photo(1600, 1000))
    assert process(cdn(), bucket, "raw/shop/shoe.jpg").status == "processed"
    paris, tokyo = edge(), edge()

    first = paris.get("/processed/shop/shoe/w640", accept=CHROME)
    assert (first.status, first.served_by, first.headers["Content-Type"]) == (200, "function", "image/avif")
    # What a first request costs in S3 requests (besides CloudFront's own GET to the bucket, a 403):
    # the output looked for, the manifest, the upload, the output stored, the manifest checked again.
    assert [(r.method, r.path.partition(bucket)[2], r.status) for r in paris.storage.log] == [
        ("GET", "/processed/shop/shoe/w640.avif", 404),
        ("GET", "/processed/shop/shoe/manifest.json", 200),
        ("GET", "/raw/shop/shoe.jpg", 200),
        ("PUT", "/processed/shop/shoe/w640.avif", 200),
        ("HEAD", "/processed/shop/shoe/manifest.json", 200),
    ]
    assert decode(first.body).size == (640, 400)
    stored = s3.get_object(Bucket=bucket, Key="processed/shop/shoe/w640.avif")
    assert stored["Body"].read() == first.body and stored["CacheControl"] == "public, max-age=31536000"

    again = paris.get("/processed/shop/shoe/w640", accept=CHROME)
    elsewhere = tokyo.get("/processed/shop/shoe/w640", accept=CHROME)
    assert (again.served_by, elsewhere.served_by) == ("edge", "bucket")
    assert again.body == elsewhere.body == first.body
    assert paris.function.invocations == 1 and len(paris.storage.log) == 5  # hits: nothing invoked, nothing more
    safari = paris.get("/processed/shop/shoe/w640", accept=SAFARI_16)  # another format: another key
    assert (safari.served_by, safari.headers["Content-Type"]) == ("function", "image/webp")
    fallback = paris.get("/processed/shop/shoe/w640", accept="*/*")
    assert fallback.headers["Content-Type"] == "image/jpeg"
    assert paris.function.invocations == 3  # one per stored output, none for a hit
    eager = tokyo.get("/processed/shop/shoe/medium.webp")
    assert (eager.status, eager.served_by) == (200, "bucket")
    assert paris.function.invocations == 3


def test_a_refused_signature_is_not_remembered_and_a_signature_is_needed_only_to_create(s3, bucket, cdn, edge):
    s3.put_object(Bucket=bucket, Key="raw/shop/shoe.jpg", Body=photo(1600, 1000))
    process(cdn(), bucket, "raw/shop/shoe.jpg")
    paris, tokyo = edge(), edge()
    path = "/processed/shop/shoe/w641.webp"

    unsigned = paris.get(path)
    assert (unsigned.status, unsigned.served_by) == (403, "function")
    assert json.loads(unsigned.body)["detail"].startswith("width 641 is not in the allowlist")
    signed_query = sign(KEY.encode(), path).partition("?")[2]
    signed = paris.get(path, query=signed_query + "&utm_source=mail")  # the 403 was not kept: it reaches the function
    assert (signed.status, signed.served_by) == (200, "function")
    assert decode(signed.body).size[0] == 641
    assert paris.function.events[-1]["rawQueryString"] == signed_query, "only sig reaches the function"
    # Once made, anyone may read it, and random `sig` values neither miss the cache nor invoke anything.
    invocations = paris.function.invocations
    assert paris.get(path, query="sig=" + "A" * 43).served_by == "edge"
    assert tokyo.get(path).status == 200 and tokyo.get(path, query="sig=junk").served_by == "edge"
    assert paris.function.invocations == invocations


def test_a_404_while_the_image_is_being_processed_is_not_remembered(s3, bucket, cdn, edge):
    paris = edge()
    early = paris.get("/processed/shop/boot/w640", accept=CHROME)
    assert (early.status, early.headers["Cache-Control"]) == (404, "no-store")
    s3.put_object(Bucket=bucket, Key="raw/shop/boot.jpg", Body=photo(900, 600))
    process(cdn(), bucket, "raw/shop/boot.jpg")
    later = paris.get("/processed/shop/boot/w640", accept=CHROME)
    assert (later.status, later.served_by) == (200, "function")
    malformed = paris.get("/processed/shop/boot/w0640.webp")
    assert malformed.status == 400 and paris.get("/processed/shop/boot/w0640.webp").served_by == "edge"


def test_a_ratio_url_goes_the_same_way_negotiated_made_once_and_served_from_the_edge(s3, bucket, cdn, edge):
    s3.put_object(Bucket=bucket, Key="raw/shop/shoe.jpg", Body=photo(1600, 1000))
    assert process(cdn(), bucket, "raw/shop/shoe.jpg").status == "processed"
    paris, tokyo = edge(), edge()

    first = paris.get("/processed/shop/shoe/w640-1x1", accept=CHROME)
    assert (first.status, first.served_by, first.headers["Content-Type"]) == (200, "function", "image/avif")
    assert decode(first.body).size == (640, 640)
    assert s3.get_object(Bucket=bucket, Key="processed/shop/shoe/w640-1x1.avif")["Body"].read() == first.body
    again, elsewhere = (
        paris.get("/processed/shop/shoe/w640-1x1", accept=CHROME),
        tokyo.get("/processed/shop/shoe/w640-1x1", accept=CHROME),
    )
    assert (again.served_by, elsewhere.served_by) == ("edge", "bucket") and again.body == first.body
    assert paris.function.invocations == 1
    fallback = paris.get("/processed/shop/shoe/w640-9x16", accept="*/*")
    assert fallback.headers["Content-Type"] == "image/jpeg" and decode(fallback.body).size == (
        562,
        999,
    )  # 9:16 of 1600×1000: never upscaled
    bad = paris.get("/processed/shop/shoe/w640-32x18", accept=CHROME)
    assert bad.status == 400 and "use 16x9" in json.loads(bad.body)["detail"]
