"""Where objects live: one small contract, three backends (S3, any litestar-storages backend)."""

from .base import ListedObject, ObjectChanged, ObjectNotFound, ObjectStore, RawObject
from .litestar import LitestarStore

__all__ = ["ListedObject", "LitestarStore", "ObjectChanged", "ObjectNotFound", "ObjectStore", "RawObject"]
