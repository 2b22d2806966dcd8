"""`image-pipeline invoke events/<file>.json` — run the real handler on a sample event locally;
`image-pipeline backfill s3://BUCKET/raw/…` — process objects already in a bucket (see backfill.py).

With no `--endpoint-url` it starts an embedded S3 (moto server on 127.0.0.1), creates the event's
bucket, uploads the image to the event's key, invokes `lambda_handler`, prints what was written,
and copies the variants to `--out`. No Docker, no AWS account.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .lambda_context import LocalContext

SAMPLE_IMAGE = "sample.jpg"
__all__ = ["LocalContext", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    invoke = commands.add_parser("invoke", help="run the handler on an event file against a local S3")
    invoke.add_argument("event", type=Path, help="an event JSON file, e.g. events/s3-put.json")
    invoke.add_argument("--image", type=Path, help="image to upload to the event's key (default: events/sample.jpg)")
    invoke.add_argument("--out", type=Path, help="copy the written variants and manifest here")
    invoke.add_argument("--endpoint-url", help="an S3 endpoint to use instead of the embedded one")
    _add_backfill(commands)
    _add_serve(commands)
    _add_sign(commands)
    _add_token(commands)
    args = parser.parse_args(argv)
    from botocore.exceptions import EndpointConnectionError

    from .errors import ConfigError

    try:
        if args.command == "backfill":
            return _backfill(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "sign":
            return _sign(args)
        if args.command == "token":
            return _token(args)
        return _invoke(args)
    except (ConfigError, FileNotFoundError, json.JSONDecodeError, EndpointConnectionError) as exc:
        print(f"image-pipeline: {exc}", file=sys.stderr)
        return 2


def _add_backfill(commands: argparse._SubParsersAction) -> None:
    backfill = commands.add_parser(
        "backfill",
        help="process objects already in the bucket (missing or stale outputs), locally or as an S3 Batch "
        "Operations job",
        description="Decide per object from its manifest whether its outputs are missing, stale (another ETag or "
        "configuration) or current, then process the chosen ones with the Lambda's own code: locally, one worker "
        "process per core, or as an S3 Batch Operations job that invokes the deployed function.",
    )
    backfill.add_argument("target", metavar="s3://BUCKET/RAW_PREFIX[PREFIX]", help="e.g. s3://my-bucket/raw/2024/")
    which = backfill.add_mutually_exclusive_group()
    which.add_argument(
        "--only-missing",
        dest="mode",
        action="store_const",
        const="only-missing",
        help="only objects that have no manifest yet",
    )
    which.add_argument(
        "--stale",
        dest="mode",
        action="store_const",
        const="stale",
        help="objects with no manifest or a stale one (another ETag or configuration): the default",
    )
    which.add_argument(
        "--all",
        dest="mode",
        action="store_const",
        const="all",
        help="every object, current ones included: each image is processed again (still only "
        "while the raw object is the version listed)",
    )
    backfill.set_defaults(mode="stale")
    backfill.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    backfill.add_argument("--dry-run", action="store_true", help="print the counts and a sample; change nothing")
    backfill.add_argument(
        "--moderate",
        action="store_true",
        help="MODERATION on later: classify images already published, hold the flagged ones (--dry-run: list them)",
    )
    backfill.add_argument("--endpoint-url", help="another S3 endpoint (moto, MinIO, LocalStack)")
    backfill.add_argument(
        "--failed-keys",
        default="backfill-failed.csv",
        metavar="FILE",
        help="where failed keys and their error codes go (default: %(default)s)",
    )
    backfill.add_argument("--quiet", action="store_true", help="no progress display")
    batch = backfill.add_argument_group("S3 Batch Operations (the large scale: AWS runs the deployed function)")
    batch.add_argument(
        "--batch-operations",
        action="store_true",
        help="write a CSV manifest of the chosen keys to the bucket and create the job",
    )
    batch.add_argument("--function", help="the function's name or ARN (default: the stack's FunctionArn output)")
    batch.add_argument(
        "--stack", default="image-pipeline", help="stack to read FunctionArn from (default: %(default)s)"
    )
    batch.add_argument("--role-arn", help="IAM role S3 Batch Operations assumes to invoke the function")
    batch.add_argument(
        "--report",
        metavar="s3://BUCKET/PREFIX",
        help="completion report of failed tasks (default: the bucket's batch-operations/reports)",
    )
    batch.add_argument("--account-id", help="AWS account id (default: from STS)")
    batch.add_argument("--region", help="region of the bucket and function (default: the AWS configuration's)")
    batch.add_argument(
        "--print-only",
        action="store_true",
        help="write the manifest, print the `aws s3control create-job` command, create nothing",
    )


def _backfill(args: argparse.Namespace) -> int:
    from .backfill import BackfillError, command

    try:
        return command(args)
    except BackfillError as exc:
        print(f"image-pipeline backfill: {exc}", file=sys.stderr)
        return 2


def _invoke(args: argparse.Namespace) -> int:
    event = json.loads(args.event.read_text())
    image = args.image or args.event.parent / SAMPLE_IMAGE
    data = image.read_bytes()
    server = None
    endpoint = args.endpoint_url
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ImagePipelineLocal")
    if endpoint is None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request lines from the embedded S3

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    try:
        return _run(event, data, endpoint, args.out)
    finally:
        if server is not None:
            server.stop()


def _run(event: dict, data: bytes, endpoint: str, out: Path | None) -> int:
    import boto3

    from . import events

    s3 = boto3.client("s3", endpoint_url=endpoint)
    refs = events.every_ref(event)
    for ref in refs:
        if ref.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=ref.bucket)
        put = s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=data)
        _set_etag(event, ref.key, put["ETag"].strip('"'), len(data))

    from .handler import RetryLater, lambda_handler, runtime  # after the endpoint is set: cold start

    try:
        for ref in (r for r in refs if r.kind == "removed"):  # a deletion: process the upload, then delete it
            print(f"{runtime.handle(type(ref)(ref.bucket, ref.key)).status}, then deleted: s3://{ref.bucket}/{ref.key}")
            s3.delete_object(Bucket=ref.bucket, Key=ref.key)
        started = time.perf_counter()
        try:
            result = lambda_handler(event, LocalContext())
        except RetryLater as exc:  # a storage failure or lack of time: Lambda would retry the event
            print(f"image-pipeline: the handler raised for a retry: {exc}", file=sys.stderr)
            return 1
        elapsed = (time.perf_counter() - started) * 1000
        print(f"\nhandler returned in {elapsed:.0f} ms: {json.dumps(result)}\n")
        _report(s3, refs, runtime, out)
        return 0
    finally:
        runtime.close()  # the S3 client and its sessions, on every way out


def _report(s3, refs: list, runtime, out: Path | None) -> None:
    """What the handler wrote for each object, and its tags; the variants copied to `out`."""
    for ref in refs:
        prefix = _prefix_of(ref.key, runtime)
        rows: list[tuple[str, ...]] = []
        if prefix:
            listing = s3.list_objects_v2(Bucket=ref.bucket, Prefix=prefix).get("Contents", [])
            for item in listing:
                head = s3.head_object(Bucket=ref.bucket, Key=item["Key"])
                meta = head.get("Metadata", {})
                px = f"{meta['width']}×{meta['height']}" if "width" in meta else ""
                rows.append((item["Key"], px, str(item["Size"]), head.get("ContentType", "")))
                if out is not None:
                    target = out / Path(item["Key"]).relative_to(runtime.settings.processed_prefix)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(s3.get_object(Bucket=ref.bucket, Key=item["Key"])["Body"].read())
        manifest_ms = ""
        if prefix and any(r[0].endswith("manifest.json") for r in rows):
            manifest = json.loads(s3.get_object(Bucket=ref.bucket, Key=prefix + "manifest.json")["Body"].read())
            manifest_ms = f" processing {manifest['processing_ms']} ms, total {manifest['total_ms']} ms"
        print(f"s3://{ref.bucket}/{ref.key}{manifest_ms}")
        _table(["key", "px", "bytes", "content-type"], rows or [("(nothing written)", "", "", "")])
        try:
            tags = s3.get_object_tagging(Bucket=ref.bucket, Key=ref.key)["TagSet"]
            print("raw object tags: " + (", ".join(f"{t['Key']}={t['Value']}" for t in tags) or "(none)"))
        except s3.exceptions.ClientError:
            print("raw object: deleted")
    if out is not None and out.exists():
        print(f"\nvariants copied to {out}/")


def _set_etag(event: dict, key: str, etag: str, size: int) -> None:
    """Make the sample event describe the object really uploaded (as S3 would)."""
    from urllib.parse import unquote_plus

    def fix(obj: dict) -> None:
        if "eTag" in obj:
            obj["eTag"], obj["size"] = etag, size
        if "etag" in obj:
            obj["etag"], obj["size"] = etag, size

    for record in event.get("Records", []):
        if "s3" in record and unquote_plus(record["s3"]["object"]["key"]) == key:
            fix(record["s3"]["object"])
        if "body" in record:
            body = json.loads(record["body"])
            _set_etag(body, key, etag, size)
            record["body"] = json.dumps(body)
    if "detail" in event and isinstance(event["detail"], dict) and "object" in event["detail"]:
        fix(event["detail"]["object"])


def _prefix_of(key: str, runtime) -> str | None:
    from .errors import InvalidKey
    from .keys import output_prefix

    try:
        return output_prefix(key, runtime.settings.raw_prefix, runtime.settings.processed_prefix)
    except InvalidKey:
        return None


def _table(headers: list[str], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))


# --- sign: width URLs outside the allowlist -------------------------------------------------


def _add_sign(commands) -> None:
    sign = commands.add_parser(
        "sign",
        help="sign an on-demand width or ratio URL (outside ONDEMAND_WIDTHS or ONDEMAND_RATIOS), "
        "or a CloudFront URL (--cloudfront)",
        description="Print PATH_OR_URL with its `sig` parameter: HMAC-SHA256 with SIGNING_KEY over the path "
        "without the format extension (one signature serves every format of that width). E.g. "
        "`image-pipeline sign /images/<id>/w641.webp`, `image-pipeline sign /images/<id>/w640-5x4.webp` or "
        "`image-pipeline sign https://<cdn>/processed/<…>/w641`. "
        "With --cloudfront: print a CloudFront signed URL (canned policy) for an object key (processed/…, under "
        "PUBLIC_BASE_URL) or a CDN URL, for a distribution with Delivery=private; the key from "
        "CLOUDFRONT_KEY_ID and CLOUDFRONT_PRIVATE_KEY or CLOUDFRONT_PRIVATE_KEY_SECRET. Both at once: "
        '`image-pipeline sign --cloudfront "$(image-pipeline sign https://<cdn>/processed/<…>/w641)"`.',
    )
    sign.add_argument("target", metavar="PATH_OR_URL")
    sign.add_argument("--key", help="the signing key (default: $SIGNING_KEY)")
    cloudfront = sign.add_argument_group("CloudFront signed URLs (Delivery=private)")
    cloudfront.add_argument("--cloudfront", action="store_true", help="print a CloudFront signed URL instead")
    cloudfront.add_argument("--key-id", help="the public key's id (default: $CLOUDFRONT_KEY_ID)")
    cloudfront.add_argument(
        "--private-key",
        type=Path,
        metavar="PEM_FILE",
        help="the private key (default: $CLOUDFRONT_PRIVATE_KEY, or the secret $CLOUDFRONT_PRIVATE_KEY_SECRET names)",
    )
    cloudfront.add_argument(
        "--expires-in", type=int, metavar="SECONDS", help="lifetime (default: $URL_EXPIRY_SECONDS, else 900)"
    )


def _sign(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .ondemand import OnDemandSettings
    from .ondemand.signing import sign

    if args.cloudfront:
        return _sign_cloudfront(args)
    key = args.key if args.key is not None else os.environ.get("SIGNING_KEY", "")
    settings = OnDemandSettings.from_env({"SIGNING_KEY": key})
    if settings.signing_key is None:
        raise ConfigError(
            "no signing key: pass --key or set SIGNING_KEY (the same key the API and the CDN's function use)"
        )
    print(sign(settings.signing_key, args.target))
    return 0


def _sign_cloudfront(args: argparse.Namespace) -> int:
    """A CloudFront signed URL for an object key or a CDN URL, with the API's own settings rules."""
    from urllib.parse import urlsplit

    from .api.delivery import signer_for
    from .api.links import object_link
    from .api.settings import ApiSettings
    from .errors import ConfigError

    names = ("PUBLIC_BASE_URL", "CLOUDFRONT_KEY_ID", "CLOUDFRONT_PRIVATE_KEY", "CLOUDFRONT_PRIVATE_KEY_SECRET")
    env = {name: os.environ[name] for name in (*names, "URL_EXPIRY_SECONDS") if os.environ.get(name)}
    target = args.target
    parts = urlsplit(target)
    if parts.scheme:  # a URL: signed as it is, under its own origin unless PUBLIC_BASE_URL says otherwise
        env.setdefault("PUBLIC_BASE_URL", f"{parts.scheme}://{parts.netloc}/")
    if args.key_id:
        env["CLOUDFRONT_KEY_ID"] = args.key_id
    if args.private_key:
        env["CLOUDFRONT_PRIVATE_KEY"] = args.private_key.read_text()
        env.pop("CLOUDFRONT_PRIVATE_KEY_SECRET", None)
    if args.expires_in is not None:
        env["URL_EXPIRY_SECONDS"] = str(args.expires_in)
    settings = ApiSettings.from_env({**env, "DELIVERY": "private", "API_AUTH": "open"}, need_bucket=False)
    signer = signer_for(settings)
    assert signer is not None and settings.public_base_url is not None
    url = target if parts.scheme else object_link(settings.public_base_url, target.lstrip("/"))
    if not url.startswith(settings.public_base_url):
        raise ConfigError(f"sign --cloudfront: {target} is not under PUBLIC_BASE_URL={settings.public_base_url}")
    print(signer.sign(url))
    return 0


# --- serve: the upload API locally ----------------------------------------------------------

LOCAL_BUCKET = "image-pipeline-local"


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the upload API and page locally (embedded S3 + local events by default)",
        description="Run the upload API. With no flags: an embedded S3 (moto server) with a CORS rule, and a "
        "local event source that delivers ObjectCreated events for new raw/ objects to the real lambda_handler.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s; other names reach it only if in ALLOWED_HOSTS)",
    )
    serve.add_argument("--port", type=int, default=8000)
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--storage", type=Path, metavar="DIR", help="keep images in DIR (no S3; processed in-process)")
    where.add_argument("--endpoint-url", help="an S3 endpoint (bucket: $BUCKET_NAME, default image-pipeline-local)")
    auth = serve.add_argument_group(
        "owners (without these: API_AUTH=open, no tokens, for this machine only)",
        "Verify bearer tokens in the app, as API Gateway's JWT authorizer does on AWS: each image then belongs to "
        "the token's sub (OWNER_CLAIM) and another user's image is a 404. `image-pipeline token` makes tokens "
        "for --jwt-secret.",
    )
    keys = auth.add_mutually_exclusive_group()
    keys.add_argument(
        "--jwt-secret", metavar="SECRET", help="verify HS256 tokens with SECRET (at least 32 bytes; or set JWT_SECRET)"
    )
    keys.add_argument("--jwks-url", metavar="URL", help="verify tokens against an identity provider's keys (JWKS)")
    auth.add_argument("--jwt-issuer", metavar="ISS", help="required iss claim")
    auth.add_argument("--jwt-audience", metavar="AUD", help="required aud claim")


def _add_token(commands) -> None:
    token = commands.add_parser(
        "token",
        help="print an HS256 token for `serve --jwt-secret` (local use)",
        description="Print a signed HS256 JWT for trying the owner rules locally against `image-pipeline serve "
        "--jwt-secret SECRET`. The secret comes from --secret or JWT_SECRET.",
    )
    token.add_argument("--secret", help="the serve --jwt-secret (default: $JWT_SECRET)")
    token.add_argument("--sub", required=True, help="the owner (the token's sub)")
    token.add_argument("--admin", action="store_true", help="add the admin scope (ADMIN_SCOPE, default images:admin)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default: %(default)s)")
    token.add_argument("--issuer", help="iss claim (serve --jwt-issuer)")
    token.add_argument("--audience", help="aud claim (serve --jwt-audience)")


def _token(args: argparse.Namespace) -> int:
    from .api.auth import make_token
    from .errors import ConfigError

    secret = args.secret or os.environ.get("JWT_SECRET", "")
    if not secret:
        raise ConfigError("token: give --secret or set JWT_SECRET (the secret serve --jwt-secret verifies with)")
    from .api.settings import MIN_SECRET_BYTES

    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ConfigError(f"token: the secret must be at least {MIN_SECRET_BYTES} bytes, as serve requires")
    scope = os.environ.get("ADMIN_SCOPE", "images:admin") if args.admin else None
    print(make_token(secret, args.sub, ttl_s=args.ttl, scope=scope, issuer=args.issuer, audience=args.audience))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "local"),
        ("AWS_SECRET_ACCESS_KEY", "local"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("POWERTOOLS_TRACE_DISABLED", "true"),
        ("POWERTOOLS_METRICS_NAMESPACE", "ImagePipelineLocal"),
        ("GALLERY", "true"),  # /gallery lists every processed image: on locally, off unless asked elsewhere
    ):
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request lines from the embedded S3
    for quiet in ("botocore", "aiobotocore", "boto3"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    url = f"http://{args.host}:{args.port}/"
    auth = _serve_auth(args)
    server = source = None
    try:
        if args.storage is not None:
            from .api import create_app

            app = create_app(storage_dir=args.storage)
            where = f"images in {args.storage.resolve()}/ (processed in this process)"
        else:
            endpoint = args.endpoint_url
            if endpoint is None:
                from moto.server import ThreadedMotoServer

                server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                server.start()
                host, port = server.get_host_and_port()
                endpoint = f"http://{host}:{port}"
                _local_event_bus(endpoint)
            os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
            bucket = os.environ.setdefault("BUCKET_NAME", LOCAL_BUCKET)
            _local_bucket(endpoint, bucket, url.rstrip("/"))
            from .api import create_app
            from .api.local_events import LocalEventSource

            app = create_app(endpoint_url=endpoint)
            source = LocalEventSource(endpoint, bucket, os.environ.get("RAW_PREFIX", "raw/")).start()
            where = f"s3://{bucket} at {endpoint} (uploads go straight to S3; events to lambda_handler)"
        print(
            f"image-pipeline API on {url}  ·  {where}\n{auth}\nopen {url} to upload; API schema at {url}schema",
            flush=True,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    finally:
        if source is not None:
            source.stop()
        if server is not None:
            server.stop()


def _serve_auth(args: argparse.Namespace) -> str:
    """Put the token settings in the environment the app reads; the start-up line about them."""
    for flag, name in (
        ("jwt_secret", "JWT_SECRET"),
        ("jwks_url", "JWKS_URL"),
        ("jwt_issuer", "JWT_ISSUER"),
        ("jwt_audience", "JWT_AUDIENCE"),
    ):
        if getattr(args, flag):
            os.environ[name] = getattr(args, flag)
    if os.environ.get("JWT_SECRET") or os.environ.get("JWKS_URL"):
        os.environ.setdefault("API_AUTH", "jwt")
    # Nothing asked for: open, by name. Local only: bound to this machine, Host and Origin checked.
    mode = os.environ.setdefault("API_AUTH", "open")
    if mode == "open":
        return (
            "auth: API_AUTH=open: no tokens, no owners; anyone who can reach this address may upload, read and "
            "delete every image (use --jwt-secret or --jwks-url for owners)"
        )
    if os.environ.get("JWT_SECRET"):
        return (
            "auth: bearer tokens (HS256, JWT_SECRET); each image belongs to its token's "
            f"{os.environ.get('OWNER_CLAIM', 'sub')}. A token: image-pipeline token --sub alice "
            "(with JWT_SECRET set, or --secret)"
        )
    if os.environ.get("JWKS_URL"):
        return f"auth: bearer tokens verified against {os.environ['JWKS_URL']}"
    from .errors import ConfigError

    # No API Gateway here to verify tokens or sign requests: every request would be refused.
    raise ConfigError(f"serve: API_AUTH={mode} needs --jwt-secret or --jwks-url locally (or API_AUTH=open)")


def _local_event_bus(endpoint: str) -> None:
    """With EVENT_BUS_NAME set, completion events go to that bus on the embedded server too."""
    bus = os.environ.get("EVENT_BUS_NAME")
    if not bus:
        return
    import boto3

    os.environ["AWS_ENDPOINT_URL_EVENTBRIDGE"] = endpoint
    boto3.client("events", endpoint_url=endpoint).create_event_bus(Name=bus)


def _local_bucket(endpoint: str, bucket: str, origin: str) -> None:
    """The bucket, with the CORS rule a browser needs to POST to it (as the template sets on AWS)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_cors(
        Bucket=bucket,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["POST", "GET"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 600,
                }
            ]
        },
    )


if __name__ == "__main__":
    sys.exit(main())
