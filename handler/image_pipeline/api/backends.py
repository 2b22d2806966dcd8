"""Where the API keeps images: S3 (presigned POST/GET; the event pipeline processes uploads) or any
other litestar-storages backend (`FileSystemStorage`, `MemoryStorage`, …: the API receives the
upload form itself and an in-process worker processes it with the same `ImageService`).

`backend_for(storage)` picks one for a litestar-storages `Storage`: `S3Storage` → `S3Backend` (its
bucket, endpoint, region and credentials, through the pipeline's own `S3Connection`), anything
else → `StorageBackend` over `LitestarStore`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from litestar_storages import BaseStorage

from ..errors import ModerationUnavailable
from ..service import STATUS_TAG, ImageService, ObjectRef
from ..storage import LitestarStore, ObjectStore
from ..storage.s3 import S3Connection
from .links import object_link

log = logging.getLogger("image_pipeline.api")


class S3Backend:
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        cache_control: str,
        max_attempts: int,
        region: str | None = None,
        credentials: dict[str, str | None] | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._credentials = credentials or {}
        self._cache_control = cache_control
        self._max_attempts = max_attempts
        self._connection: S3Connection | None = None
        self._signer: Any = None
        self._stack = contextlib.AsyncExitStack()
        self.store: ObjectStore | None = None

    @classmethod
    def of_storage(cls, storage: Any, *, cache_control: str, max_attempts: int) -> S3Backend:
        """The bucket, endpoint, region and credentials of a litestar-storages `S3Storage`. Its own
        client is left alone (it opens one per call): the pipeline keeps one for the app's life."""
        config = storage.config
        if config.prefix:
            raise ValueError(
                f"S3Storage(prefix={config.prefix!r}): give the image pipeline the bucket without a prefix, "
                "and choose where images go with raw_prefix= and processed_prefix= instead"
            )
        return cls(
            config.bucket,
            endpoint_url=config.endpoint_url,
            cache_control=cache_control,
            max_attempts=max_attempts,
            region=config.region,
            credentials={
                "aws_access_key_id": config.access_key_id,
                "aws_secret_access_key": config.secret_access_key,
                "aws_session_token": config.session_token,
            },
        )

    async def start(self, service: ImageService) -> None:
        import aioboto3
        from aiobotocore.config import AioConfig

        session = aioboto3.Session(**{k: v for k, v in self._credentials.items() if v}, region_name=self.region)
        self._connection = await S3Connection.open(
            endpoint_url=self.endpoint_url,
            region=self.region,
            session=session,
            cache_control=self._cache_control,
            max_attempts=self._max_attempts,
        )
        self.store = self._connection.store(self.bucket)
        # Presigning is local (no request); SigV4 explicitly, as every region requires for POST policies.
        self._signer = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.endpoint_url, config=AioConfig(signature_version="s3v4"))
        )

    async def close(self) -> None:
        await self._stack.aclose()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def presign_upload(
        self, key: str, content_type: str, max_bytes: int, expires_s: int, base_url: str, metadata: dict[str, str]
    ) -> dict:
        """A presigned POST pinning the exact key, the size range, an image/ Content-Type and each
        metadata field exactly (`x-amz-meta-owner`: the uploader cannot choose or drop it)."""
        meta = {f"x-amz-meta-{name}": value for name, value in metadata.items()}
        return await self._signer.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,  # adds the exact {"key": key} condition
            Fields={"Content-Type": content_type, **meta},
            Conditions=[
                ["starts-with", "$Content-Type", "image/"],
                ["content-length-range", 1, max_bytes],
                *({field: value} for field, value in meta.items()),  # exact match (Fields adds none)
            ],
            ExpiresIn=expires_s,
        )

    async def object_url(self, key: str, expires_s: int, base_url: str) -> str:
        return await self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    def uploaded(self, key: str) -> None:
        """Nothing to do: S3 announces the new object to the pipeline (ObjectCreated)."""


class UploadRefused(ValueError):
    """A local upload form that was not signed by this server, or not for this key/size."""


class StorageBackend:
    """Any litestar-storages backend as the bucket (tags and metadata beside the objects, see
    `LitestarStore`). Uploads come back to the API (`POST /uploads/local`) with a form shaped like
    S3's presigned POST: the signed `policy` (key, size cap, expiry) is checked with an HMAC key
    made at start-up, so only forms this server handed out are accepted. An in-process worker
    processes them (and `POST /images/async`) in the process's image slots."""

    bucket = "local"

    def __init__(self, storage: BaseStorage) -> None:
        from litestar_storages import FileSystemStorage, MemoryStorage

        self.storage = storage
        self.kind = (
            "filesystem"
            if isinstance(storage, FileSystemStorage)
            else "memory"
            if isinstance(storage, MemoryStorage)
            else type(storage).__name__
        )
        self.store: ObjectStore = LitestarStore(storage)
        self._secret = secrets.token_bytes(32)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._service: ImageService | None = None

    async def start(self, service: ImageService) -> None:
        self._service = service
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="image-pipeline-worker")
        # Uploads stored before a restart and never marked are processed now: state lives in the files.
        after = None
        while True:
            page = await self.store.list(service.raw_prefix, start_after=after, limit=1000)
            for item in page:
                if STATUS_TAG not in await self.store.get_tags(item.key):
                    self._queue.put_nowait(item.key)
            if len(page) < 1000:
                break
            after = page[-1].key

    async def close(self) -> None:
        """The worker stops (an upload it had not finished stays unmarked: processed on the next
        start). The storage is the app's: not closed here."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def idle(self) -> None:
        """Until every queued upload has been processed (tests, shutdown)."""
        await self._queue.join()

    def uploaded(self, key: str) -> None:
        self._queue.put_nowait(key)

    async def _work(self) -> None:
        assert self._service is not None
        while True:
            key = await self._queue.get()
            try:
                # The image work runs in the service's pool (a worker thread, off this loop), in one
                # of the slots uploads use too; a queued upload waits for its slot, never refused.
                async with self._service.pool.reserve(wait_s=None):
                    outcome = await self._service.handle(self.store, ObjectRef(self.bucket, key))
                log.info("local worker: %s %s %s", key, outcome.status, outcome.error_code or "")
            except ModerationUnavailable as exc:  # no verdict yet: again shortly (tries counted, then held)
                log.warning("local worker: %s: %s; trying again", key, exc)
                asyncio.get_running_loop().call_later(1.0, self._queue.put_nowait, key)
            except Exception:  # a storage failure: logged; the upload stays unmarked for the next start
                log.exception("local worker could not process %s", key)
            finally:
                self._queue.task_done()

    async def presign_upload(
        self, key: str, content_type: str, max_bytes: int, expires_s: int, base_url: str, metadata: dict[str, str]
    ) -> dict:
        policy = {"key": key, "max_bytes": max_bytes, "expires": int(time.time()) + expires_s, "metadata": metadata}
        encoded = base64.urlsafe_b64encode(json.dumps(policy, separators=(",", ":")).encode()).decode()
        meta = {f"x-amz-meta-{name}": value for name, value in metadata.items()}
        return {
            "url": base_url + "uploads/local",
            "fields": {
                "key": key,
                "Content-Type": content_type,
                **meta,
                "policy": encoded,
                "signature": self._sign(encoded),
            },
        }

    def check_policy(self, fields: dict[str, Any]) -> dict:
        """The policy of a local upload form, if this server signed it and it has not expired."""
        encoded = str(fields.get("policy", ""))
        if not hmac.compare_digest(self._sign(encoded), str(fields.get("signature", ""))):
            raise UploadRefused("the upload form is not signed by this server")
        policy = json.loads(base64.urlsafe_b64decode(encoded))
        if policy["expires"] < time.time():
            raise UploadRefused("the upload form has expired")
        if fields.get("key") != policy["key"]:
            raise UploadRefused("the key is not the one the form was signed for")
        for name, value in (policy.get("metadata") or {}).items():  # S3's exact-match conditions
            if fields.get(f"x-amz-meta-{name}") != value:
                raise UploadRefused(f"x-amz-meta-{name} is not the one the form was signed for")
        if not str(fields.get("Content-Type", "")).startswith("image/"):
            raise UploadRefused("Content-Type must start with image/")
        return policy

    async def object_url(self, key: str, expires_s: int, base_url: str) -> str:
        return object_link(base_url + "files/", key)

    def _sign(self, encoded: str) -> str:
        return hmac.new(self._secret, encoded.encode(), hashlib.sha256).hexdigest()


class FileBackend(StorageBackend):
    """A directory as the bucket (`serve --storage DIR`): `FileSystemStorage` over it."""

    def __init__(self, directory: str | Path) -> None:
        from litestar_storages import FileSystemConfig, FileSystemStorage

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        super().__init__(FileSystemStorage(FileSystemConfig(path=self.directory, create_dirs=True)))


Backend = S3Backend | StorageBackend


def backend_for(storage: BaseStorage, *, cache_control: str, max_attempts: int) -> Backend:
    """`S3Storage` → S3's semantics (presigned POST, tags, conditional writes); any other
    litestar-storages backend → in-process processing over `LitestarStore`."""
    from litestar_storages import S3Storage

    if isinstance(storage, S3Storage):
        return S3Backend.of_storage(storage, cache_control=cache_control, max_attempts=max_attempts)
    if not isinstance(storage, BaseStorage):
        raise TypeError(f"storage must be a litestar-storages Storage (or its name), not {type(storage).__name__}")
    return StorageBackend(storage)
