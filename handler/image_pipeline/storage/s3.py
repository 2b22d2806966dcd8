"""S3 as an `ObjectStore`: litestar-storages' `S3Storage` for writes, deletes and optional reads,
the same aioboto3 client directly for what S3Storage has no API for (tags, a GET that returns
the ETag, conditional writes and deletes). `classify` turns every error, whichever way it came,
into the pipeline's: missing (also a bare 404), changed, refused (permanent) or transient.

S3Storage opens a new aioboto3 client per call (60-80 ms each); here one client is opened per
container and lent to S3Storage, so every request reuses its connection pool. Retries are
botocore's own (`standard` mode with backoff), configured once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from litestar_storages import S3Config, S3Storage, StorageError, StorageFileNotFoundError

from ..errors import PipelineError, StorageDenied, StorageFailure, TooLarge
from .base import ListedObject, ObjectChanged, ObjectNotFound, RawObject, merge_tags

# "404" / "NotFound": what botocore reports for a 404 without an error body (any HEAD, and a GET
# on S3-compatible servers that send a bare 404): a missing key all the same.
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CHANGED = {"PreconditionFailed", "412", "ConditionalRequestConflict"}  # 409: a concurrent conditional write
# Refusals that stay until someone changes a policy, a bucket or a key: not worth a retry.
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "NoSuchBucket",
    "InvalidObjectState",
    "InvalidBucketState",
    "403",
    "Forbidden",
}
_KMS_TRANSIENT = ("Throttl", "Internal", "Unavailable", "LimitExceeded")


def _error_code(exc: BaseException | None) -> str | None:
    """The S3 error code of a botocore ClientError, or of the one a litestar StorageError wraps."""
    for candidate in (exc, getattr(exc, "__cause__", None)):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code") or None
    return None


def classify(exc: BaseException, operation: str, url: str) -> PipelineError:
    """A storage exception as the pipeline's error: missing, changed, refused (permanent) or a
    failure worth a retry (throttling, 5xx, network, timeouts)."""
    code = _error_code(exc)
    if code in _NOT_FOUND:
        return ObjectNotFound(f"{url} does not exist")
    if code in _CHANGED:
        return ObjectChanged(f"{url} is no longer the version read ({operation} precondition failed)")
    if code is not None and (
        code in _DENIED or (code.startswith("KMS.") and not any(word in code for word in _KMS_TRANSIENT))
    ):
        return StorageDenied(f"{operation} {url} refused ({code}): {getattr(exc, '__cause__', None) or exc}")
    return StorageFailure(f"{operation} {url} failed: {exc}")


class _LentClient:
    """Makes a long-lived client look like the one-shot context manager S3Storage expects."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def __aenter__(self) -> Any:
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        return None


class _SharedClientS3Storage(S3Storage):
    def __init__(self, config: S3Config, client: Any) -> None:
        super().__init__(config)
        self._shared = client

    async def _get_client(self) -> Any:
        return _LentClient(self._shared)


class S3Connection:
    """One aioboto3 client for the container's life, lent to a store per bucket."""

    def __init__(self, client: Any, stack: contextlib.AsyncExitStack, endpoint_url: str | None) -> None:
        self.client = client
        self.endpoint_url = endpoint_url
        self._stack = stack
        self._stores: dict[str, S3Store] = {}

    @classmethod
    async def open(
        cls,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        cache_control: str | None = None,
        max_attempts: int = 5,
        session: Any = None,
    ) -> S3Connection:
        import aioboto3
        from aiobotocore.config import AioConfig

        session = session or aioboto3.Session()
        config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": max_attempts},  # incl. the first
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
            tcp_keepalive=True,
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        )

        # S3Storage.put has no Cache-Control argument: add it to every PutObject this client
        # sends. Images get the long lifetime; the manifest changes when a raw key is
        # overwritten, so caches must always revalidate it.
        def add_cache_control(params: dict, **_: Any) -> None:
            if not str(params.get("ContentType", "")).startswith("image/"):
                params.setdefault("CacheControl", "no-cache")
            elif cache_control:
                params.setdefault("CacheControl", cache_control)

        client.meta.events.register("before-parameter-build.s3.PutObject", add_cache_control)
        return cls(client, stack, endpoint_url)

    def store(self, bucket: str) -> S3Store:
        if bucket not in self._stores:
            self._stores[bucket] = S3Store(bucket, self.client, self.endpoint_url)
        return self._stores[bucket]

    async def close(self) -> None:
        self._stores.clear()
        await self._stack.aclose()


class S3Store:
    """One bucket, through a shared client; see `S3Connection`."""

    def __init__(self, bucket: str, client: Any, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.client = client
        self.storage = _SharedClientS3Storage(S3Config(bucket=bucket, endpoint_url=endpoint_url), client)

    async def read(self, key: str, max_bytes: int | None = None) -> RawObject:
        with _typed_errors("GetObject", f"s3://{self.bucket}/{key}"):
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                size = response["ContentLength"]
                metadata = dict(response.get("Metadata") or {})
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge.over(size, max_bytes, etag=response["ETag"].strip('"'), metadata=metadata)
                data = await body.read()
        if len(data) != size:
            raise StorageFailure(f"short read of s3://{self.bucket}/{key}: {len(data)} of {size} bytes")
        return RawObject(data, response["ETag"].strip('"'), size, metadata)

    async def read_optional(self, key: str) -> bytes | None:
        try:
            return await self.storage.get_bytes(key)
        except StorageFileNotFoundError:
            return None
        except StorageError as exc:
            error = classify(exc, "GetObject", f"s3://{self.bucket}/{key}")
            if isinstance(error, ObjectNotFound):  # a bare 404 (no NoSuchKey code): still missing
                return None
            raise error from exc

    async def exists(self, key: str) -> bool:
        return await self.etag(key) is not None

    async def etag(self, key: str) -> str | None:
        try:
            response = await self._call("head_object", key)
        except ObjectNotFound:
            return None
        return response["ETag"].strip('"')

    async def write(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        try:
            await self.storage.put(key, data, content_type=content_type, metadata=metadata)
        except StorageError as exc:
            raise classify(exc, "PutObject", f"s3://{self.bucket}/{key}") from exc

    async def write_if(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str], *, etag: str | None
    ) -> None:
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": f'"{etag}"'}
        try:
            await self._call("put_object", key, Body=data, ContentType=content_type, Metadata=metadata, **condition)
        except StorageFailure as exc:
            # An S3-compatible server without conditional writes: write as before (the owner check
            # is then only as strong as the read before it; see docs/lifecycle.md, "Two names").
            if not _not_implemented(exc):
                raise
            await self.write(key, data, content_type, metadata)

    async def get_tags(self, key: str) -> dict[str, str]:
        response = await self._call("get_object_tagging", key)
        return {t["Key"]: t["Value"] for t in response.get("TagSet", [])}

    async def set_tags(
        self, key: str, tags: dict[str, str], remove: tuple[str, ...] = (), existing: dict[str, str] | None = None
    ) -> None:
        if existing is None:
            existing = await self.get_tags(key)
        merged = merge_tags(existing, tags, remove)
        if merged == existing:
            return  # already so, or no room left beside the uploader's own tags
        tag_set = [{"Key": k, "Value": v} for k, v in merged.items()]
        await self._call("put_object_tagging", key, Tagging={"TagSet": tag_set})

    async def delete(self, key: str, etag: str | None = None) -> None:
        if etag is not None:  # S3 conditional delete (If-Match): 412 when a newer upload replaced it
            try:
                await self._call("delete_object", key, IfMatch=f'"{etag}"')
                return
            except StorageFailure as exc:
                if not _not_implemented(exc):
                    raise
            # An S3-compatible server without conditional deletes (LocalStack: 501): check the
            # version with a HEAD, then delete plainly. A replacement uploaded between the two
            # requests would be deleted unprocessed (see docs/lifecycle.md, "Raw disposition").
            current = await self.etag(key)
            if current is None:
                raise ObjectNotFound(f"s3://{self.bucket}/{key} does not exist")
            if current != etag:
                raise ObjectChanged(f"s3://{self.bucket}/{key} is no longer the version read")
        try:
            await self.storage.delete(key)
        except StorageError as exc:
            raise classify(exc, "DeleteObject", f"s3://{self.bucket}/{key}") from exc

    async def close(self) -> None:
        """The client belongs to the `S3Connection`; closing it is the connection's job."""

    async def _call(self, operation: str, key: str, **params: Any) -> dict:
        with _typed_errors(operation, f"s3://{self.bucket}/{key}"):
            return await getattr(self.client, operation)(Bucket=self.bucket, Key=key, **params)

    async def list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[ListedObject]:
        """One ListObjectsV2 page (S3 returns at most 1000 keys per request)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max(1, min(limit, 1000))}
        if start_after:
            params["StartAfter"] = start_after
        with _typed_errors("ListObjectsV2", f"s3://{self.bucket}/{prefix}"):
            response = await self.client.list_objects_v2(**params)
        return [
            ListedObject(item["Key"], item.get("ETag", "").strip('"'), item["Size"], item["LastModified"])
            for item in response.get("Contents", [])
        ]


def _not_implemented(exc: StorageFailure) -> bool:
    """The server does not implement what the request asked for (a conditional write or delete)."""
    return _error_code(exc.__cause__) in ("NotImplemented", "501")


@contextlib.contextmanager
def _typed_errors(operation: str, url: str) -> Iterator[None]:
    """What botocore/aiohttp raise (after botocore's retries) → the pipeline's errors (`classify`)."""
    from aiohttp import ClientError as HttpError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        raise classify(exc, operation, url) from exc
    except (BotoCoreError, HttpError, OSError) as exc:
        raise StorageFailure(f"{operation} {url} failed: {exc}") from exc
