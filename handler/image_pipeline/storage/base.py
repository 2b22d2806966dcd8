"""The small store contract the service needs, whatever holds the objects.

Every backend (S3, filesystem, memory) passes the same contract tests (tests/contract). Errors:
`ObjectNotFound` for a missing key, `ObjectChanged` when a conditional request finds another
version, `StorageDenied` when the store refuses (permanent), `StorageFailure` for anything the
store could not do after its own retries (transient); nothing else escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ..errors import StoreError


class ObjectNotFound(StoreError):
    """The key does not exist (any more)."""

    code = "not_found"
    permanent = True


class ObjectChanged(StoreError):
    """The key now holds another version than the one the caller read (a newer upload)."""

    code = "changed"
    permanent = True


S3_MAX_TAGS = 10


def merge_tags(existing: dict[str, str], tags: dict[str, str], remove: tuple[str, ...] = ()) -> dict[str, str]:
    """The object's tags with `tags` merged in and `remove` dropped, within S3's 10-tag limit.

    The uploader's own tags always stay; ours are added in order (the status first) while there
    is room, so an object that already carries 9 or 10 tags gets fewer of ours, never an error.
    """
    merged = {k: v for k, v in existing.items() if k not in remove}
    for key, value in tags.items():
        if key in merged or len(merged) < S3_MAX_TAGS:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class RawObject:
    data: bytes
    etag: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)  # what `write` stored (S3: x-amz-meta-*)


@dataclass(frozen=True)
class ListedObject:
    """One entry of a listing."""

    key: str
    etag: str
    size: int
    last_modified: datetime


class ObjectStore(Protocol):
    async def read(self, key: str, max_bytes: int | None = None) -> RawObject:
        """The object's bytes, ETag and metadata in one request; `TooLarge` (with the `etag` and
        `metadata` it saw) before reading an oversize body."""

    async def read_optional(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    async def exists(self, key: str) -> bool: ...

    async def etag(self, key: str) -> str | None:
        """The key's current ETag (one HEAD), or None when it does not exist."""

    async def write(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        """Store `data` with `metadata` (replacing any the key had); S3 adds the configured
        Cache-Control."""

    async def write_if(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str], *, etag: str | None
    ) -> None:
        """`write`, only while the key still holds version `etag` (None: only while it does not
        exist); `ObjectChanged` otherwise (S3 conditional writes, If-Match / If-None-Match)."""

    async def get_tags(self, key: str) -> dict[str, str]: ...

    async def set_tags(
        self, key: str, tags: dict[str, str], remove: tuple[str, ...] = (), existing: dict[str, str] | None = None
    ) -> None:
        """Merge `tags` into the object's tags, dropping the `remove` keys (other tags are kept).
        `existing`: the tags the caller has just read, which saves reading them again."""

    async def delete(self, key: str, etag: str | None = None) -> None:
        """Delete `key`. With `etag`, only while the key still holds that version: a newer upload
        under the same key raises `ObjectChanged` and stays (S3 conditional delete, If-Match)."""

    async def close(self) -> None: ...

    async def list(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> list[ListedObject]:
        """Up to `limit` objects whose keys start with `prefix`, in key order (UTF-8 bytes, as S3
        lists), after `start_after` when given: one page (one ListObjectsV2 request on S3)."""
