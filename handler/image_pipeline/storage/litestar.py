"""Any litestar-storages backend (MemoryStorage, FileSystemStorage) as an `ObjectStore`.

litestar-storages has no object tags, and FileSystemStorage keeps no metadata, so both live beside
the object, under `.tags/<key>.json` and `.meta/<key>.json` in the same storage (the metadata file
only for an object written with metadata). Used for local runs, the upload API on a disk, and the
contract tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime

from litestar_storages import BaseStorage, StorageError, StorageFileNotFoundError

from ..errors import StorageFailure, TooLarge
from .base import ListedObject, ObjectChanged, ObjectNotFound, RawObject, merge_tags

TAGS_PREFIX = ".tags/"
META_PREFIX = ".meta/"


class LitestarStore:
    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage

    async def read(self, key: str, max_bytes: int | None = None) -> RawObject:
        data = await self._get(key)
        if data is None:
            raise ObjectNotFound(f"{key} does not exist")
        metadata = await self._metadata(key)
        if max_bytes is not None and len(data) > max_bytes:
            raise TooLarge.over(len(data), max_bytes, etag=await _etag(data), metadata=metadata)
        return RawObject(data, await _etag(data), len(data), metadata)

    async def read_optional(self, key: str) -> bytes | None:
        return await self._get(key)

    async def write(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        # The metadata first: a new key is never seen without the metadata it was written with.
        if metadata:
            await self._put(META_PREFIX + key + ".json", json.dumps(metadata).encode(), "application/json")
        else:
            await self._remove(META_PREFIX + key + ".json")
        await self._put(key, data, content_type, metadata)

    async def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> None:
        try:
            await self.storage.put(key, data, content_type=content_type, metadata=metadata or {})
        except StorageError as exc:
            raise StorageFailure(f"could not write {key}: {exc}") from exc

    async def _remove(self, key: str) -> None:
        try:
            await self.storage.delete(key)
        except StorageFileNotFoundError:
            pass
        except StorageError as exc:
            raise StorageFailure(f"could not delete {key}: {exc}") from exc

    async def _metadata(self, key: str) -> dict[str, str]:
        raw = await self._get(META_PREFIX + key + ".json")
        return json.loads(raw) if raw else {}

    async def write_if(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str], *, etag: str | None
    ) -> None:
        current = await self.etag(key)  # not atomic here: these backends serve one process at a time
        if current != etag:
            raise ObjectChanged(f"{key} is {'there' if current else 'gone'}, not the version expected")
        await self.write(key, data, content_type, metadata)

    async def get_tags(self, key: str) -> dict[str, str]:
        raw = await self._get(TAGS_PREFIX + key + ".json")
        return json.loads(raw) if raw else {}

    async def set_tags(
        self, key: str, tags: dict[str, str], remove: tuple[str, ...] = (), existing: dict[str, str] | None = None
    ) -> None:
        if not await self.exists(key):
            raise ObjectNotFound(f"{key} does not exist")
        merged = merge_tags(await self.get_tags(key) if existing is None else existing, tags, remove)
        await self._put(TAGS_PREFIX + key + ".json", json.dumps(merged).encode(), "application/json")

    async def delete(self, key: str, etag: str | None = None) -> None:
        if etag is not None:  # not atomic here: these backends serve one process at a time
            current = await self.etag(key)
            if current is None:
                raise ObjectNotFound(f"{key} does not exist")
            if current != etag:
                raise ObjectChanged(f"{key} is no longer the version read")
        for path in (key, TAGS_PREFIX + key + ".json", META_PREFIX + key + ".json"):
            await self._remove(path)

    async def close(self) -> None:
        await self.storage.close()

    async def _get(self, key: str) -> bytes | None:
        try:
            return await self.storage.get_bytes(key)
        except StorageFileNotFoundError:
            return None
        except StorageError as exc:
            raise StorageFailure(f"could not read {key}: {exc}") from exc

    async def etag(self, key: str) -> str | None:
        data = await self._get(key)
        return None if data is None else await _etag(data)

    async def exists(self, key: str) -> bool:
        try:
            return await self.storage.exists(key)
        except StorageError as exc:
            raise StorageFailure(f"could not check {key}: {exc}") from exc

    async def list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[ListedObject]:
        """These backends list everything under the prefix unordered: sorted here as S3 sorts
        (UTF-8 bytes), the tags beside the objects left out. The ETag is read for the page only."""
        # FileSystemStorage lists a directory: list the prefix's directory and filter the rest.
        directory = prefix.rpartition("/")[0] + "/" if "/" in prefix else ""
        try:
            found = [item async for item in self.storage.list(directory)]
        except StorageError as exc:
            raise StorageFailure(f"could not list {prefix}: {exc}") from exc
        entries = sorted(
            (f for f in found if f.key.startswith(prefix) and not f.key.startswith((TAGS_PREFIX, META_PREFIX))),
            key=lambda f: f.key.encode("utf-8", "surrogatepass"),
        )
        if start_after is not None:
            after = start_after.encode("utf-8", "surrogatepass")
            entries = [f for f in entries if f.key.encode("utf-8", "surrogatepass") > after]
        page = []
        for item in entries[: max(1, limit)]:
            etag = await self.etag(item.key)
            if etag is None:  # deleted since it was listed
                continue
            modified = item.last_modified or datetime.now(UTC)
            page.append(ListedObject(item.key, etag, item.size, modified))
        return page


async def _etag(data: bytes) -> str:
    """What S3 reports for a single-part upload: the hex MD5 of the bytes (a big upload's, ~80 ms
    for 50 MB, in a thread: hashlib releases the GIL, the event loop goes on serving)."""
    if len(data) < 1 << 20:
        return _md5(data)
    return await asyncio.to_thread(_md5, data)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
