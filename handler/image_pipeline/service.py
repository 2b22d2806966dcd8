"""One image's job, against any `ObjectStore`:

    read the manifest and the raw object together (one round trip) → skip if the manifest
    already records this upload → process
    → write every variant concurrently → write manifest LAST
    → tag `processed` or delete raw, if it is still the version processed; if a newer upload
      replaced it meanwhile, go again with that one: our writes may have interleaved with its
      own invocation's, and the last writer must leave outputs that match the raw object

A bad image (any `ImageRejected`) is tagged `failed` with its code and kept; nothing is written
under the output prefix. A storage failure propagates as `StorageFailure` so the caller reports it
for a retry; the raw object is then left exactly as it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from time import perf_counter

from . import keys, manifest
from .errors import CorruptImage, ImageRejected, NameConflict, PipelineError, StorageFailure, TooLarge
from .processor import ImageProcessor, ProcessedImage
from .storage import ObjectChanged, ObjectNotFound, ObjectStore

STATUS_TAG = "image-pipeline-status"
ERROR_TAG = "image-pipeline-error"
MAX_ROUNDS = 3  # passes over one object when it keeps being replaced while being processed


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object, as an event names it."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None


@dataclass
class Outcome:
    """What happened to one object; the handler logs and counts it."""

    status: str  # processed | skipped | failed | ignored | gone
    key: str
    reason: str = ""
    error_code: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    processing_ms: float = 0.0
    total_ms: float = 0.0
    outputs: list[dict] = field(default_factory=list)


class ImageService:
    def __init__(
        self,
        processor: ImageProcessor,
        *,
        raw_prefix: str = "raw/",
        processed_prefix: str = "processed/",
        disposition: str = "tag",
    ) -> None:
        if disposition not in ("tag", "delete"):
            raise ValueError("disposition must be 'tag' or 'delete'")
        self.processor = processor
        self.raw_prefix = raw_prefix
        self.processed_prefix = processed_prefix
        self.disposition = disposition
        names = [v.name for v in processor.variants] + (["original"] if processor.preserve_original else [])
        self._longest_leaf = keys.longest_leaf(names)

    async def handle(self, store: ObjectStore, ref: ObjectRef) -> Outcome:
        started = perf_counter()
        try:
            prefix = keys.output_prefix(ref.key, self.raw_prefix, self.processed_prefix, self._longest_leaf)
        except ImageRejected as exc:
            return await self._reject(store, ref, exc, started)
        if prefix is None:
            return Outcome("ignored", ref.key, reason=f"outside {self.raw_prefix!r}")

        limit = self.processor.limits.max_bytes
        if ref.size is not None and ref.size > limit:
            return await self._reject(store, ref, TooLarge.over(ref.size, limit), started)
        for attempt in range(MAX_ROUNDS):
            outcome = await self._handle_current(store, ref, prefix, started, redo=attempt > 0)
            if outcome is not None:
                if attempt:
                    outcome.reason = outcome.reason or f"processed again ({attempt}×): the upload was replaced meanwhile"
                return outcome
        raise StorageFailure(f"{ref.key} was replaced {MAX_ROUNDS} times while its outputs were written; retry later")

    async def _handle_current(
        self, store: ObjectStore, ref: ObjectRef, prefix: str, started: float, redo: bool
    ) -> Outcome | None:
        """One pass over the object as it is now. None: it was replaced while its outputs were being
        written, so they may be stale (another invocation's writes can interleave with ours) and
        the caller must go again, without the "already done" shortcut."""
        manifest_key = keys.manifest_key(prefix)
        limit = self.processor.limits.max_bytes
        # Both reads at once: one round trip instead of two for every new image; a duplicate
        # delivery (rare) wastes the raw GET but still does no image work.
        stored_manifest, raw = await asyncio.gather(
            store.read_optional(manifest_key), store.read(ref.key, max_bytes=limit), return_exceptions=True
        )
        if isinstance(stored_manifest, BaseException):
            raise stored_manifest
        owner, recorded = manifest.recorded_source(stored_manifest) or (ref.key, None)
        if isinstance(raw, ObjectNotFound):
            if owner == ref.key and recorded == ref.etag:  # processed, then deleted: a duplicate
                return Outcome("skipped", ref.key, reason="manifest already records this ETag")
            return Outcome("gone", ref.key, reason="raw object no longer exists")
        if isinstance(raw, ImageRejected):
            return await self._reject(store, ref, raw, started)
        if isinstance(raw, BaseException):
            raise raw
        if owner != ref.key and await store.exists(owner):
            conflict = NameConflict(f"{owner!r} already owns {prefix!r}; rename this upload")
            return await self._reject(store, ref, conflict, started, bytes_in=raw.size)
        # Compare with the object as it is now, not with the event: a late event for an older
        # upload must neither skip nor delete/tag the newer one (which is processed instead).
        if not redo and owner == ref.key and recorded == raw.etag:
            # idempotent: finishes a run that died after the manifest
            if not await self._dispose(store, ref.key, raw.etag):
                return None
            return Outcome("skipped", ref.key, reason="manifest already records this ETag")

        try:
            processed = self.processor.process_image(raw.data)
        except ImageRejected as exc:
            return await self._reject(store, ref, exc, started, bytes_in=raw.size)
        except PipelineError:
            raise
        except Exception as exc:  # a decoder crash on hostile input is still a bad image
            return await self._reject(store, ref, CorruptImage(f"{type(exc).__name__}: {exc}"), started, raw.size)

        record = await self._write_outputs(store, ref, prefix, raw.etag, processed, started)
        if not await self._dispose(store, ref.key, raw.etag):
            return None
        return Outcome(
            "processed",
            ref.key,
            bytes_in=raw.size,
            bytes_out=sum(v["bytes"] for v in record["variants"]),
            processing_ms=processed.processing_ms,
            total_ms=(perf_counter() - started) * 1000,
            outputs=record["variants"] + [{"name": "manifest", "key": manifest_key}],
        )

    async def _write_outputs(
        self, store: ObjectStore, ref: ObjectRef, prefix: str, etag: str, processed: ProcessedImage, started: float
    ) -> dict:
        """Every variant at once, then the manifest: its presence means all of them are there."""
        variant_keys = {v.name: keys.variant_key(prefix, v.name, v.extension) for v in processed.variants}
        await asyncio.gather(
            *(
                store.write(
                    variant_keys[v.name],
                    v.data,
                    v.content_type,
                    {"width": str(v.width), "height": str(v.height), "variant": v.name, "source-etag": etag},
                )
                for v in processed.variants
            )
        )
        record = manifest.build(
            bucket=ref.bucket,
            key=ref.key,
            etag=etag,
            processed=processed,
            variant_keys=variant_keys,
            total_ms=(perf_counter() - started) * 1000,
        )
        await store.write(keys.manifest_key(prefix), manifest.dumps(record), "application/json", {"source-etag": etag})
        return record

    async def _dispose(self, store: ObjectStore, key: str, etag: str) -> bool:
        """Tag the raw object `processed` or delete it, if it is still the version processed.

        False when a newer upload has replaced it: its outputs may then have been overwritten by
        ours, so the caller processes it again. The check is a HEAD before tagging (S3 tagging has
        no condition) and S3's conditional delete (If-Match) when deleting."""
        try:
            if self.disposition == "delete":
                await store.delete(key, etag=etag)
            else:
                # Both reads in one round trip; the tags are only used if the version matches.
                current, existing = await asyncio.gather(store.etag(key), store.get_tags(key))
                if current is not None and current != etag:
                    return False
                await store.set_tags(key, {STATUS_TAG: "processed"}, remove=(ERROR_TAG,), existing=existing)
        except ObjectNotFound:
            pass  # already deleted (delete mode, or by its owner): nothing left to mark
        except ObjectChanged:
            return False
        return True

    async def _reject(
        self, store: ObjectStore, ref: ObjectRef, error: PipelineError, started: float, bytes_in: int = 0
    ) -> Outcome:
        try:
            await store.set_tags(ref.key, {STATUS_TAG: "failed", ERROR_TAG: error.code})
        except ObjectNotFound:
            pass
        return Outcome(
            "failed",
            ref.key,
            reason=error.message,
            error_code=error.code,
            bytes_in=bytes_in,
            total_ms=(perf_counter() - started) * 1000,
        )


    async def remove(self, store: ObjectStore, raw_key: str, *, delete_raw: bool = False) -> Outcome:
        """Delete the raw object if asked, then the outputs of that key (manifest last) if its manifest is that key's."""
        if delete_raw:
            try:
                await store.delete(raw_key)
            except ObjectNotFound:
                pass
        prefix = keys.output_prefix(raw_key, self.raw_prefix, self.processed_prefix, self._longest_leaf)
        if prefix is None:
            return Outcome("ignored", raw_key, reason=f"outside {self.raw_prefix!r}")
        manifest_key = keys.manifest_key(prefix)
        stored = await store.read_optional(manifest_key)
        owner = manifest.recorded_source(stored)
        if owner is None or owner[0] != raw_key:
            return Outcome("gone", raw_key, reason="no outputs of this key")
        import json

        for variant in json.loads(stored)["variants"]:
            try:
                await store.delete(variant["key"])
            except ObjectNotFound:
                pass
        await store.delete(manifest_key)
        return Outcome("removed", raw_key, reason="raw object and outputs deleted" if delete_raw else "outputs deleted")
