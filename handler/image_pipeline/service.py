"""One image's job, against any `ObjectStore`:

    read the manifest and the raw object together (one round trip) → skip if the manifest
    already records this upload and this configuration's fingerprint → process
    → write every variant concurrently → write manifest LAST → delete the outputs the previous
      manifest listed that the new one does not (variants no longer configured)
    → tag `processed` or delete raw, if it is still the version processed; if a newer upload
      replaced it meanwhile, go again with that one: our writes may have interleaved with its
      own invocation's, and the last writer must leave outputs that match the raw object

With a moderation gate (`gate`, MODERATION), the processed image is judged before anything is
written: publish (as above, the manifest recording the verdict under `moderation`), blur (strongly
blurred variants are published instead) or hold: nothing is written under the output prefix (a
previous upload's outputs there are removed), the raw object is tagged `held` and the verdict kept
in its moderation record (moderation/gate.py) until `review` approves or rejects it.

A bad image (any `ImageRejected`) is tagged `failed` with its code and kept; nothing is written
under the output prefix. `remove` is the one call for "this upload is gone": it deletes the
outputs (manifest last) while the manifest still belongs to that raw key. A storage failure
propagates as `StorageFailure` so the caller reports it for a retry; the raw object is then left
exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter

from . import ids, keys, manifest
from .errors import (
    Busy,
    CorruptImage,
    ImageRejected,
    Moderated,
    NameConflict,
    PipelineError,
    StorageDenied,
    StorageFailure,
    TooManyPixels,
)
from .moderation import ModerationUnavailable
from .moderation import gate as moderation
from .moderation.gate import Gate, Judgement
from .pool import ProcessingPool
from .processor import Face, ImageFormat, ImageProcessor, ProcessedImage, VariantConfig
from .processor.blur import blurred, rendition_of
from .processor.fingerprint import fingerprint
from .processor.geometry import output_size
from .processor.specs import Fit, Gravity
from .storage import ObjectChanged, ObjectNotFound, ObjectStore, RawObject
from .storage.base import merge_tags

STATUS_TAG = "image-pipeline-status"
ERROR_TAG = "image-pipeline-error"
RENDITION = 320  # px, longest side of what the moderation gate looks at (see ImageProcessor.rendition)
# A stored verdict for the same upload is used again (a replay, a reprocess, an approval) instead of
# asking the engine again; the state → the action.
_DECIDED = {"held": "hold", "approved": "publish", "passed": "publish", "blurred": "blur"}
MAX_ROUNDS = 3  # passes over one object when it keeps being replaced while being processed


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object, as an event names it. `kind`: "created" (an upload, or a task to
    process an object already there) or "removed" (the raw object was deleted)."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None  # a hint only: the object itself is measured again
    kind: str = "created"


class NotReady(Exception):
    """The image has no outputs to place a focal point in now: its upload is being processed
    again (a newer upload under the same key), or is no longer kept (RAW_DISPOSITION=delete)."""


@dataclass(frozen=True)
class Made:
    """One output made on request (`ImageService.make_variant`): its key and bytes. `made` is False
    when another request stored it first; these are then the stored bytes, so every concurrent
    first request answers the same."""

    key: str
    data: bytes
    content_type: str
    made: bool


@dataclass
class Outcome:
    """What happened to one object; the handler logs and counts it."""

    status: str  # processed | skipped | failed | ignored | gone | removed | held
    key: str
    reason: str = ""
    error_code: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    processing_ms: float = 0.0
    total_ms: float = 0.0
    outputs: list[dict] = field(default_factory=list)
    tags_dropped: list[str] = field(default_factory=list)  # ours, no room beside the uploader's 10
    owner: str | None = None  # whom the upload belongs to (its metadata, checked against its id)
    moderation: dict | None = None  # held: the moderation record (labels, scores, reason)


class ReviewConflict(Exception):
    """A review decision that cannot be taken: never held, or already decided the other way."""


@dataclass
class Reviewed:
    """A review decision taken (or taken before: `repeated`): the record and what it did."""

    record: dict
    outcome: Outcome
    repeated: bool = False


class ImageService:
    def __init__(
        self,
        processor: ImageProcessor,
        *,
        raw_prefix: str = "raw/",
        processed_prefix: str = "processed/",
        disposition: str = "tag",
        pool: ProcessingPool | None = None,
        gate: Gate | None = None,
    ) -> None:
        """`pool`: where image work runs (a worker thread, the process's bounded slots; see
        pool.py). Default: the process's slots, one per CPU, waiting as long as it takes.
        `gate`: the moderation check between processed and published (None: every image is published)."""
        if disposition not in ("tag", "delete"):
            raise ValueError("disposition must be 'tag' or 'delete'")
        # Lazy variants are made on their first request (make_variant), not on upload; they are
        # part of the configuration all the same (the fingerprint, removals, the manifest's list).
        self.fingerprint = fingerprint(processor)
        self.lazy = tuple(v for v in processor.variants if v.lazy)
        self.gate = gate
        if gate is not None and not processor.rendition:
            processor = _with_variants(processor, list(processor.variants), rendition=RENDITION)
        if self.lazy:
            processor = _with_variants(processor, [v for v in processor.variants if not v.lazy])
        self.processor = processor
        self.raw_prefix = raw_prefix
        self.processed_prefix = processed_prefix
        self.disposition = disposition
        self.pool = pool or ProcessingPool.of_process()
        names = [v.name for v in (*processor.variants, *self.lazy)] + (
            ["original"] if processor.preserve_original else []
        )
        self._longest_leaf = keys.longest_leaf(names)

    def output_prefix(self, raw_key: str) -> str | None:
        """The output prefix of a raw key, or None for a key outside raw/ or one that is refused."""
        try:
            return keys.output_prefix(raw_key, self.raw_prefix, self.processed_prefix, self._longest_leaf)
        except ImageRejected:
            return None

    async def state(self, store: ObjectStore, raw_key: str, etag: str | None) -> str:
        """`missing` (no manifest for this key, or the prefix's manifest is another key's), `stale`
        (the manifest records another ETag or another configuration's fingerprint) or `current`."""
        prefix = self.output_prefix(raw_key)
        if prefix is None:
            return "missing"
        record = manifest.recorded(await store.read_optional(keys.manifest_key(prefix)))
        if record is None or record.key != raw_key:
            return "missing"
        if record.etag != (etag or "").strip('"') or record.fingerprint != self.fingerprint:
            return "stale"
        return "current"

    async def remove(self, store: ObjectStore, raw_key: str, *, delete_raw: bool = False) -> Outcome:
        """This upload is gone (an `ObjectRemoved` event) or is to be deleted (`delete_raw`).

        With `delete_raw` the raw object is deleted first. Then, only if the manifest under its
        output prefix still belongs to `raw_key`, every output it lists and every key a configured
        variant can have there are deleted, the manifest last (its presence keeps meaning "all
        listed variants exist"). "removed", or "ignored" when nothing there belonged to it.

        Without `delete_raw` (an event: someone else deleted the raw object):
        - in delete mode the pipeline deletes raw objects itself once their outputs are written,
          so a raw object disappearing is the normal end of its life and never removes outputs
          (the event carries no ETag to tell our own delete from anyone else's);
        - a raw key that exists again (a new upload under the same name) keeps its outputs; if it
          reappears while the outputs are being deleted, it is processed again here, since its
          own invocation may have finished before the deletes.
        """
        started = perf_counter()
        prefix = self.output_prefix(raw_key)
        if prefix is None:
            return Outcome("ignored", raw_key, reason=f"no outputs: outside {self.raw_prefix!r} or an invalid key")
        if delete_raw:
            await store.delete(raw_key)
            if self.gate is not None:
                await self.forget(store, raw_key)
        elif self.disposition == "delete":
            return Outcome(
                "ignored", raw_key, reason="delete mode: raw objects are removed once processed; outputs stay"
            )
        manifest_key = keys.manifest_key(prefix)
        if delete_raw:
            stored, current = await store.read_optional(manifest_key), None
        else:
            stored, current = await asyncio.gather(store.read_optional(manifest_key), store.etag(raw_key))
        if current is not None:
            return Outcome("ignored", raw_key, reason="the raw key holds a new upload; its outputs stay")
        record = manifest.recorded(stored)
        if record is None or record.key != raw_key:
            reason = "no manifest" if record is None else f"the outputs belong to {record.key!r}"
            return Outcome("ignored", raw_key, reason=reason)
        targets = await self._unpublish(store, prefix, record)
        if not delete_raw and await store.etag(raw_key) is not None:
            # Re-uploaded while we deleted: its own run may have ended before our deletes.
            return await self.handle(store, ObjectRef(record.bucket, raw_key))
        return Outcome(
            "removed",
            raw_key,
            reason=f"{len(targets)} output key(s) and the manifest deleted",
            total_ms=(perf_counter() - started) * 1000,
            outputs=[{"key": k} for k in sorted(targets)] + [{"name": "manifest", "key": manifest_key}],
        )

    async def _unpublish(self, store: ObjectStore, prefix: str, record: manifest.Recorded) -> list[str]:
        """Delete every output `record` lists, every key a configured variant can have under
        `prefix` and what was made there on request; the manifest last. The keys deleted (without it)."""
        manifest_key = keys.manifest_key(prefix)
        made_on_request = await self._made_on_request(store, prefix)
        targets = {
            k for k in (*record.output_keys, *self._possible_outputs(prefix), *made_on_request) if k.startswith(prefix)
        }
        targets.discard(manifest_key)
        await asyncio.gather(*(store.delete(k) for k in sorted(targets)))
        await store.delete(manifest_key)
        return sorted(targets)

    async def forget(self, store: ObjectStore, raw_key: str) -> None:
        """Delete the upload's moderation record and its place in the review queue (the upload is
        gone for good)."""
        await store.delete(moderation.held_key(raw_key, self.raw_prefix))
        await store.delete(moderation.record_key(raw_key, self.raw_prefix))

    def _possible_outputs(self, prefix: str, specs: tuple[VariantConfig, ...] | None = None) -> set[str]:
        """Every key a configured variant (of `specs`; default all, lazy ones included) can have
        under `prefix` (a variant without a fixed format takes the source's, so each extension
        it can have)."""
        extensions = sorted({f.extension for f in ImageFormat} | {"heif", "tiff", "bmp"})
        everything = specs is None
        chosen = (*self.processor.variants, *self.lazy) if specs is None else specs
        names = [(v.name, v.format) for v in chosen]
        if everything and self.processor.preserve_original:
            names.append(("original", None))
        return {
            keys.variant_key(prefix, name, ext)
            for name, fmt in names
            for ext in ([fmt.extension] if fmt is not None else extensions)
        }

    async def _made_on_request(self, store: ObjectStore, prefix: str, *, crops_only: bool = False) -> list[str]:
        """The width and ratio URLs' outputs under `prefix` (`w640.webp`, `w640`, `w640-16x9.webp`):
        one listing of `prefix + "w"`, keeping the leaves directly under it (another image's prefix
        can nest below this one). `crops_only`: the ratio outputs alone (cut around the subject)."""
        from .ondemand.paths import BadOutput, parse_width  # the leaf grammar lives with the room that serves it

        found, after = [], None
        while True:
            page = await store.list(prefix + "w", start_after=after, limit=1000)
            for item in page:
                leaf = item.key[len(prefix) :]
                if "/" in leaf:
                    continue
                try:
                    request = parse_width(leaf)
                except BadOutput:
                    continue
                if crops_only and request.ratio is None:
                    continue
                found.append(item.key)
            if len(page) < 1000:
                return found
            after = page[-1].key

    def lazy_key(self, prefix: str, spec: VariantConfig, source_type: str) -> str:
        """The key a lazy variant is stored at: the one an eager variant of that spec would have."""
        return keys.variant_key(prefix, spec.name, self.processor.format_for(spec, source_type).extension)

    def _lazy_entry(self, prefix: str, spec: VariantConfig, source_type: str) -> dict:
        fmt = self.processor.format_for(spec, source_type)
        return {
            "name": spec.name,
            "key": keys.variant_key(prefix, spec.name, fmt.extension),
            "format": fmt.value,
            "content_type": fmt.content_type,
        }

    async def make_variant(
        self, store: ObjectStore, prefix: str, spec_for: Callable[[dict], VariantConfig], key: str
    ) -> Made:
        """Make one output on request: `spec_for(manifest source)` (a width-only spec, or a lazy
        variant's) from the raw object the manifest under `prefix` names, stored at `key` with
        S3's conditional write.

        The same limits as an upload: the raw object's size before its body is read, the source's
        and the output's pixels, the types; image work under the same bound as uploads
        (`_process`). Stored only if nobody stored it first (If-None-Match: *); otherwise the
        stored bytes are returned, so concurrent first requests all answer the same bytes. If the
        image was processed again meanwhile (the manifest changed: a new upload or configuration),
        what we wrote is deleted again, as the reprocess's own clean-up would have. Raises
        ObjectNotFound when the image has no manifest (never processed, rejected, or gone)."""
        manifest_key = keys.manifest_key(prefix)
        stored = await _read_if_any(store, manifest_key)
        record = manifest.parse(stored.data) if stored is not None else None
        if stored is None or record is None:
            raise ObjectNotFound(f"{prefix} has no manifest")
        source = record["source"]
        spec = spec_for(source)
        width, height = int(source.get("width") or 0), int(source.get("height") or 0)
        out_w, out_h = output_size(spec, width, height) if width and height else (0, 0)
        if out_w * out_h > self.processor.limits.max_pixels:
            raise TooManyPixels(f"{out_w}×{out_h} is over the {self.processor.limits.max_pixels}-pixel limit")
        raw = await store.read(str(source["key"]), max_bytes=self.processor.limits.max_bytes)
        # The subject the manifest recorded (its faces, a focal point set by hand): a crop made on
        # request keeps what the eager ones keep, and the detector is not run again.
        processed = await self._process(
            _with_variants(self.processor, [spec], rendition=0), raw.data, **manifest.subject(record)
        )
        if (record.get("moderation") or {}).get("blurred"):  # MODERATION_ACTION=blur flagged it: so is this
            processed = await self.pool.run(blurred, processed, self.processor.background_color)
        (variant,) = processed.variants
        meta = {
            "width": str(variant.width),
            "height": str(variant.height),
            "variant": spec.name,
            "source-etag": raw.etag,
        }
        try:
            await store.write_if(key, variant.data, variant.content_type, meta, etag=None)
        except ObjectChanged:  # another request stored it first: answer with what is stored
            return Made(key, (await store.read(key)).data, variant.content_type, made=False)
        if await store.etag(manifest_key) != stored.etag:
            with contextlib.suppress(ObjectNotFound, ObjectChanged):
                await store.delete(key, etag=hashlib.md5(variant.data, usedforsecurity=False).hexdigest())
        return Made(key, variant.data, variant.content_type, made=True)

    async def moderate_published(self, store: ObjectStore, ref: ObjectRef, *, apply: bool) -> Outcome:
        """Moderation turned on later, for an image already published (`backfill --moderate`).

        The largest variant the manifest lists is classified (never the upload again); an image
        the gate flags is held when `apply` ("would_hold" without it): its outputs are removed, the
        raw object is tagged `held` and the record written, as if it had been held on arrival.
        Outcome status: held | would_hold | passed | skipped (not published, or already judged)."""
        if self.gate is None:
            raise ValueError("moderation is off (MODERATION=off)")
        started = perf_counter()
        prefix = self.output_prefix(ref.key)
        if prefix is None:
            return Outcome("skipped", ref.key, reason="outside the raw prefix")
        stored = await _read_if_any(store, keys.manifest_key(prefix))
        record = manifest.parse(stored.data if stored else None)
        recorded = manifest.recorded(stored.data if stored else None)
        if record is None or recorded is None or recorded.key != ref.key:
            return Outcome("skipped", ref.key, reason="not published (no manifest of its own)")
        if record.get("moderation"):
            return Outcome("skipped", ref.key, reason="already judged when it was published")
        largest = max(record.get("variants") or [], key=lambda v: int(v.get("width", 0)) * int(v.get("height", 0)))
        data = (await store.read(str(largest["key"]))).data
        rendition = await self.pool.run(rendition_of, data, RENDITION)
        try:
            outcome = await self.pool.run(self.gate.classify, ((0, rendition),))
        except ModerationUnavailable as exc:
            return Outcome("failed", ref.key, reason=exc.message, error_code=exc.code)
        owner = record.get("owner")
        judged = self.gate.judge(None, ref.key, recorded.etag, owner, outcome)
        flagged = judged.action != "publish"
        if flagged and apply and await store.etag(ref.key) != recorded.etag:
            reason = "flagged, but the upload it was made from is gone (RAW_DISPOSITION=delete?): nothing to hold"
            return Outcome("would_hold", ref.key, reason=reason, owner=owner, moderation=judged.record)
        if not flagged or not apply:
            status = "would_hold" if flagged else "passed"
            labels = ", ".join(judged.record.get("labels") or ())
            return Outcome(status, ref.key, reason=labels, owner=owner, moderation=judged.record)
        held = Judgement("hold", {**judged.record, "state": "held", "held_at": moderation.now()})
        await store.write(
            moderation.record_key(ref.key, self.raw_prefix), moderation.dumps(held.record), "application/json", {}
        )
        raw = RawObject(b"", recorded.etag, 0)
        outcome_ = await self._hold(store, ref, prefix, raw, held, recorded, started, owner)
        return outcome_ or Outcome("skipped", ref.key, reason="replaced by a new upload meanwhile")

    async def review(self, store: ObjectStore, bucket: str, raw_key: str, decision: str, by: str | None) -> Reviewed:
        """A reviewer's decision on a held upload: `approve` publishes it as if it had passed
        (outputs, manifest with `moderation.action: approved`); `reject` deletes the upload and
        any output (the moderation record stays, saying `rejected`, so the same decision sent
        again answers the same; a later upload under the key has another ETag and starts over).

        The same decision again: the same answer (an approval whose publishing failed midway is
        finished now). The other decision, or an upload never held: `ReviewConflict`."""
        if decision not in ("approve", "reject"):
            raise ValueError("decision must be approve or reject")
        record_key = moderation.record_key(raw_key, self.raw_prefix)
        record = moderation.parse(await store.read_optional(record_key))
        state = (record or {}).get("state")
        wanted = "approved" if decision == "approve" else "rejected"
        if record is None or state not in ("held", "approved", "rejected"):
            raise ReviewConflict("this image was never held for review")
        if state not in ("held", wanted):
            raise ReviewConflict(f"this image was already {state}")
        if state == "held":
            if await store.etag(raw_key) != record["etag"]:
                raise ReviewConflict("the upload held is no longer there (deleted or replaced)")
            record = {**record, "state": wanted, "decided_at": moderation.now(), "decided_by": by}
            await store.write(record_key, moderation.dumps(record), "application/json", {})
            await store.delete(moderation.held_key(raw_key, self.raw_prefix))
        ref = ObjectRef(bucket, raw_key)
        if decision == "approve":
            outcome = await self.handle(store, ref)
            return Reviewed(record, outcome, repeated=state == wanted)
        if await store.etag(raw_key) == record["etag"]:
            with contextlib.suppress(ObjectNotFound, ObjectChanged):
                await store.delete(raw_key, etag=record["etag"])
        await self.remove(store, raw_key)
        outcome = Outcome(
            "failed",
            raw_key,
            reason="rejected by a reviewer",
            error_code=Moderated.code,
            owner=record.get("owner"),
            moderation=record,
        )
        return Reviewed(record, outcome, repeated=state == wanted)

    async def _process(
        self,
        processor: ImageProcessor,
        data: bytes,
        *,
        focal_point: tuple[float, float] | None = None,
        faces: tuple[Face, ...] | None = None,
    ) -> ProcessedImage:
        """The processor's work on `data`: off the event loop, under the process's bound (`Busy`
        when the caller's wait runs out). The one place image work is started."""
        work = functools.partial(processor.process_image, focal_point=focal_point, faces=faces)
        return await self.pool.run(work, data)

    async def set_focal(self, store: ObjectStore, raw_key: str, point: tuple[float, float] | None) -> Outcome:
        """Record a focal point set by hand (`point`, normalised x, y) or go back to the detected
        subject (None), and make every crop keep it: the image is processed again with it (eager
        variants written, the manifest last, recording `focal_source` "manual"), then the crops made
        on request (ratio outputs, lazy `cover` variants with gravity `auto`) are deleted, to be made
        again on their next request. Width-only outputs are left alone (no crop).

        ObjectNotFound: no manifest of `raw_key` (never processed, failed, or gone). NotReady: the
        upload is not there to process again (delete mode) or a newer one is being processed."""
        started = perf_counter()
        prefix = self.output_prefix(raw_key)
        if prefix is None:
            raise ObjectNotFound(f"{raw_key} has no outputs")
        manifest_key = keys.manifest_key(prefix)
        stored = await _read_if_any(store, manifest_key)
        previous = manifest.recorded(stored.data if stored else None)
        if stored is None or previous is None or previous.key != raw_key:
            raise ObjectNotFound(f"{raw_key} has no outputs")
        try:
            raw = await store.read(raw_key, max_bytes=self.processor.limits.max_bytes)
        except ObjectNotFound:
            raise NotReady(
                "the upload is no longer kept (raw objects are deleted once processed), so its crops "
                "cannot be made again around a new focal point"
            ) from None
        if raw.etag != previous.etag:
            raise NotReady("a newer upload of this image is being processed; try again once it is done")
        # The faces the manifest recorded are kept (no detection again); the point replaces the subject's.
        recorded_faces = manifest.subject(manifest.parse(stored.data) or {}).get("faces")
        processed = await self._process(self.processor, raw.data, focal_point=point, faces=recorded_faces)
        uploader = ids.owner_of(raw_key, self.raw_prefix, raw.metadata)
        ref = ObjectRef(previous.bucket, raw_key)
        record, winner = await self._write_outputs(
            store, ref, prefix, raw.etag, processed, started, stored.etag, uploader
        )
        if winner is not None:  # pragma: no cover - the key was checked to own the prefix above
            raise NotReady(f"{winner.key!r} owns these outputs now")
        now = manifest.recorded(await store.read_optional(manifest_key))
        if (
            now is None
            or now.etag != raw.etag
            or now.manual_focal != (processed.focal_point if point is not None else None)
        ):
            raise NotReady("the image was processed again meanwhile; set the focal point again")
        written = {v["key"] for v in record["variants"]}
        crops = tuple(s for s in self.lazy if s.fit is Fit.COVER and s.gravity is Gravity.AUTO)
        stale = {
            *(k for k in previous.output_keys if k not in written),
            *await self._made_on_request(store, prefix, crops_only=True),
            *self._possible_outputs(prefix, crops),
        }
        deleted = sorted(k for k in stale if k.startswith(prefix) and k != manifest_key and k not in written)
        await asyncio.gather(*(store.delete(k) for k in deleted))
        return Outcome(
            "processed",
            raw_key,
            reason="focal point set by hand" if point is not None else "focal point back to the detected subject",
            bytes_in=raw.size,
            bytes_out=sum(v["bytes"] for v in record["variants"]),
            processing_ms=processed.processing_ms,
            total_ms=(perf_counter() - started) * 1000,
            outputs=record["variants"]
            + [{"name": "manifest", "key": manifest_key}]
            + [{"key": k, "deleted": True} for k in deleted],
            owner=uploader,
        )

    async def handle(self, store: ObjectStore, ref: ObjectRef, *, force: bool = False) -> Outcome:
        """`force`: process even when the manifest is current (a backfill's `--all`)."""
        started = perf_counter()
        try:
            prefix = keys.output_prefix(ref.key, self.raw_prefix, self.processed_prefix, self._longest_leaf)
        except ImageRejected as exc:  # every version of this key is refused alike
            return await self._reject(store, ref, exc, started, etag=None) or Outcome("gone", ref.key)
        if prefix is None:
            return Outcome("ignored", ref.key, reason=f"outside {self.raw_prefix!r}")
        try:
            return await self._rounds(store, ref, prefix, started, force)
        except StorageDenied as exc:
            # Not the upload's fault, but it will not pass by itself: say so on the object, when
            # the store lets us, so it can be found and replayed once the cause is fixed.
            with contextlib.suppress(PipelineError):
                await self._tag(store, ref.key, {STATUS_TAG: "failed", ERROR_TAG: exc.code}, etag=None)
            raise

    async def _rounds(
        self, store: ObjectStore, ref: ObjectRef, prefix: str, started: float, force: bool = False
    ) -> Outcome:
        # The event's size is only a hint: the GET measures the object itself before reading it
        # (a late event for an older, larger upload must not reject the newer one).
        for attempt in range(MAX_ROUNDS):
            outcome = await self._handle_current(store, ref, prefix, started, redo=force or attempt > 0)
            if outcome is not None:
                if attempt:
                    outcome.reason = (
                        outcome.reason or f"processed again ({attempt}×): the upload was replaced meanwhile"
                    )
                return outcome
        raise StorageFailure(f"{ref.key} was replaced {MAX_ROUNDS} times while its outputs were written; retry later")

    async def _handle_current(
        self, store: ObjectStore, ref: ObjectRef, prefix: str, started: float, redo: bool
    ) -> Outcome | None:
        """One pass over the object as it is now. None: it was replaced while its outputs were being
        written (or judged), so they may be stale (another invocation's writes can interleave with
        ours) and the caller must go again, without the "already done" shortcut."""
        manifest_key = keys.manifest_key(prefix)
        limit = self.processor.limits.max_bytes
        # Both reads at once: one round trip instead of two for every new image; a duplicate
        # delivery (rare) wastes the raw GET but still does no image work.
        stored_manifest, raw = await asyncio.gather(
            _read_if_any(store, manifest_key), store.read(ref.key, max_bytes=limit), return_exceptions=True
        )
        if isinstance(stored_manifest, BaseException):
            raise stored_manifest
        previous = manifest.recorded(stored_manifest.data if stored_manifest else None)
        owner, recorded = (previous.key, previous.etag) if previous else (ref.key, None)
        if isinstance(raw, ObjectNotFound):
            if owner == ref.key and recorded == ref.etag:  # processed, then deleted: a duplicate
                return Outcome("skipped", ref.key, reason="manifest already records this ETag")
            return Outcome("gone", ref.key, reason="raw object no longer exists")
        if isinstance(raw, ImageRejected):  # too large, measured on the object itself
            rejected_owner = ids.owner_of(ref.key, self.raw_prefix, raw.metadata or {})
            return await self._reject(store, ref, raw, started, etag=raw.etag, owner=rejected_owner)
        if isinstance(raw, BaseException):
            raise raw
        # The owner the API wrote beside the upload, kept only when the id in the key is the owner's.
        uploader = ids.owner_of(ref.key, self.raw_prefix, raw.metadata)
        if owner != ref.key and await store.exists(owner):
            conflict = NameConflict(f"{owner!r} already owns {prefix!r}; rename this upload")
            return await self._reject(store, ref, conflict, started, etag=raw.etag, bytes_in=raw.size, owner=uploader)
        # Compare with the object as it is now, not with the event: a late event for an older
        # upload must neither skip nor delete/tag the newer one (which is processed instead).
        if (
            not redo
            and previous is not None
            and owner == ref.key
            and recorded == raw.etag
            and previous.fingerprint == self.fingerprint
        ):
            # idempotent: finishes a run that died after the manifest
            dropped = await self._dispose(store, ref.key, raw.etag)
            if dropped is None:
                return None
            return Outcome(
                "skipped",
                ref.key,
                reason="manifest already records this ETag and configuration",
                tags_dropped=dropped,
                owner=uploader,
            )

        # A focal point set by hand is a property of the image, not of the configuration: the same
        # upload processed again (a new configuration, a backfill) keeps it; a new upload does not.
        manual = None
        if stored_manifest and owner == ref.key and recorded == raw.etag:
            manual = manifest.subject(manifest.parse(stored_manifest.data) or {}).get("focal_point")
        try:
            # Off the event loop, under the process's bound (Busy when the API's wait runs out).
            processed = await self._process(self.processor, raw.data, focal_point=manual)
        except ImageRejected as exc:
            return await self._reject(store, ref, exc, started, etag=raw.etag, bytes_in=raw.size, owner=uploader)
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder crash on hostile input is still a bad image
            error = CorruptImage(f"{type(exc).__name__}: {exc}")
            return await self._reject(store, ref, error, started, etag=raw.etag, bytes_in=raw.size, owner=uploader)

        return await self._release(store, ref, prefix, raw, processed, stored_manifest, previous, started, uploader)

    async def _release(
        self,
        store: ObjectStore,
        ref: ObjectRef,
        prefix: str,
        raw: RawObject,
        processed: ProcessedImage,
        stored_manifest: RawObject | None,
        previous: manifest.Recorded | None,
        started: float,
        uploader: str | None,
    ) -> Outcome | None:
        """The gate between processed and published: publish, publish blurred, or hold."""
        judged = await self._judge(store, ref, raw, processed, uploader)
        if judged is None or judged.action == "publish":
            return await self._publish(
                store, ref, prefix, raw, processed, stored_manifest, previous, started, uploader, judged
            )
        if judged.action == "blur":
            processed = await self.pool.run(blurred, processed, self.processor.background_color)
            return await self._publish(
                store, ref, prefix, raw, processed, stored_manifest, previous, started, uploader, judged
            )
        return await self._hold(store, ref, prefix, raw, judged, previous, started, uploader)

    async def _judge(
        self, store: ObjectStore, ref: ObjectRef, raw: RawObject, processed: ProcessedImage, owner: str | None
    ) -> Judgement | None:
        """The gate's judgement (None without a gate). A verdict already stored for this upload is
        used again; otherwise the engine classifies the processor's renditions (in an image slot).
        No verdict: `ModerationUnavailable` is raised (the record is retried) while tries are left,
        counted in the moderation record; then the image is held (fail closed)."""
        if self.gate is None:
            return None
        record_key = moderation.record_key(ref.key, self.raw_prefix)
        previous = moderation.parse(await store.read_optional(record_key))
        if previous is not None and previous.get("etag") == raw.etag and previous.get("state") in _DECIDED:
            return Judgement(_DECIDED[previous["state"]], previous)
        outcome: tuple | Exception
        try:
            outcome = await self.pool.run(self.gate.classify, processed.renditions)
        except Busy:
            raise
        except ModerationUnavailable as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - an engine's crash is no verdict either: fail closed
            outcome = ModerationUnavailable(f"{type(exc).__name__}: {exc}")
        try:
            judged = self.gate.judge(previous, ref.key, raw.etag, owner, outcome)
        except moderation.Retry as retry:
            await store.write(record_key, moderation.dumps(retry.record), "application/json", {})
            raise
        await store.write(record_key, moderation.dumps(judged.record), "application/json", {})
        return judged

    async def _hold(
        self,
        store: ObjectStore,
        ref: ObjectRef,
        prefix: str,
        raw: RawObject,
        judged: Judgement,
        previous: manifest.Recorded | None,
        started: float,
        uploader: str | None,
    ) -> Outcome | None:
        """Nothing under the output prefix (an earlier upload's outputs there are removed), the raw
        object tagged `held` (kept whatever RAW_DISPOSITION says: a reviewer needs it), the verdict
        in the moderation record (`_judge` wrote it). None when a newer upload replaced it meanwhile."""
        if previous is not None and previous.key == ref.key:
            await self._unpublish(store, prefix, previous)
        held_key = moderation.held_key(ref.key, self.raw_prefix)
        await store.write(held_key, moderation.dumps(judged.record), "application/json", {})
        unavailable = judged.record.get("reason") == moderation.UNAVAILABLE
        tags = {STATUS_TAG: "held", **({ERROR_TAG: moderation.UNAVAILABLE} if unavailable else {})}
        try:
            dropped = await self._tag(store, ref.key, tags, etag=raw.etag, remove=() if unavailable else (ERROR_TAG,))
        except ObjectNotFound:
            dropped = []
        except ObjectChanged:
            return None
        labels = ", ".join(judged.record.get("labels") or ()) or "no verdict"
        return Outcome(
            "held",
            ref.key,
            reason=f"held for review: {labels}",
            error_code=moderation.UNAVAILABLE if unavailable else None,
            bytes_in=raw.size,
            total_ms=(perf_counter() - started) * 1000,
            tags_dropped=dropped,
            owner=uploader,
            moderation=judged.record,
        )

    async def _publish(
        self,
        store: ObjectStore,
        ref: ObjectRef,
        prefix: str,
        raw: RawObject,
        processed: ProcessedImage,
        stored_manifest: RawObject | None,
        previous: manifest.Recorded | None,
        started: float,
        uploader: str | None,
        judged: Judgement | None = None,
    ) -> Outcome | None:
        """Write the outputs and the manifest, remove what the previous one had that this one has
        not, and mark the raw object (see the module's docstring)."""
        manifest_key = keys.manifest_key(prefix)
        record, winner = await self._write_outputs(
            store,
            ref,
            prefix,
            raw.etag,
            processed,
            started,
            stored_manifest.etag if stored_manifest else None,
            uploader,
            judged.manifest_entry() if judged is not None else None,
        )
        if winner is not None:  # another name took the prefix while we wrote: see `_write_outputs`
            await self._repair(store, winner, prefix)
            conflict = NameConflict(f"{winner.key!r} owns {prefix!r} (uploaded at the same time); rename this upload")
            return await self._reject(store, ref, conflict, started, etag=raw.etag, bytes_in=raw.size, owner=uploader)
        if previous is not None:
            # Variants no longer configured (or now of another format), and everything made on
            # request from the previous upload or configuration: width URLs and lazy variants are
            # made again, from this one, on their next request.
            written = {v["key"] for v in record["variants"]}
            stale = {
                *previous.output_keys,
                *await self._made_on_request(store, prefix),
                *self._possible_outputs(prefix, self.lazy),
            }
            leftovers = sorted(k for k in stale if k.startswith(prefix) and k not in written and k != manifest_key)
            await asyncio.gather(*(store.delete(k) for k in leftovers))
        dropped = await self._dispose(store, ref.key, raw.etag)
        if dropped is None:
            return None
        return Outcome(
            "processed",
            ref.key,
            bytes_in=raw.size,
            bytes_out=sum(v["bytes"] for v in record["variants"]),
            processing_ms=processed.processing_ms,
            total_ms=(perf_counter() - started) * 1000,
            outputs=record["variants"] + [{"name": "manifest", "key": manifest_key}],
            tags_dropped=dropped,
            owner=uploader,
        )

    async def _write_outputs(
        self,
        store: ObjectStore,
        ref: ObjectRef,
        prefix: str,
        etag: str,
        processed: ProcessedImage,
        started: float,
        manifest_etag: str | None,
        owner: str | None = None,
        moderated: dict | None = None,
    ) -> tuple[dict, manifest.Recorded | None]:
        """Every variant at once, then the manifest: its presence means all of them are there.

        The manifest write is conditional on the manifest read before (S3 If-None-Match / If-Match),
        which makes the owner check hold when two names (`a.jpg`, `a.png`) write one prefix at
        once: only one manifest lands. The other writer gets the winner's record back (second
        value) and must repair the variants it may have overwritten."""
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
            fingerprint=self.fingerprint,
            lazy=[self._lazy_entry(prefix, spec, processed.source.type) for spec in self.lazy],
            owner=owner,
            moderation=moderated,
        )
        data, manifest_key = manifest.dumps(record), keys.manifest_key(prefix)
        for _ in range(MAX_ROUNDS):
            try:
                await store.write_if(manifest_key, data, "application/json", {"source-etag": etag}, etag=manifest_etag)
                return record, None
            except ObjectChanged:  # someone wrote the manifest since we read it
                current = await _read_if_any(store, manifest_key)
            found = manifest.recorded(current.data if current else None)
            if found is not None and found.key != ref.key:
                return record, found
            if found is not None and (found.etag, found.fingerprint) == (etag, self.fingerprint):
                return record, None  # a duplicate delivery wrote the same outputs: nothing to add
            # our own key (a duplicate delivery, or a newer upload of it: `_dispose` sorts that out)
            manifest_etag = current.etag if current else None
        raise StorageFailure(f"{manifest_key} kept changing while it was written; retry later")

    async def _repair(self, store: ObjectStore, winner: manifest.Recorded, prefix: str) -> None:
        """Process the winner of a race for `prefix` again: our variants may have overwritten its."""
        ref = ObjectRef(winner.bucket, winner.key)
        for _ in range(MAX_ROUNDS):
            outcome = await self._handle_current(store, ref, prefix, perf_counter(), redo=True)
            if outcome is not None:
                return
        raise StorageFailure(f"{winner.key} was replaced while its outputs were repaired; retry later")

    async def _dispose(self, store: ObjectStore, key: str, etag: str) -> list[str] | None:
        """Tag the raw object `processed` or delete it, if it is still the version processed.
        Returns our tags that did not fit beside the uploader's (S3 allows 10), usually none.

        None when a newer upload has replaced it: its outputs may then have been overwritten by
        ours, so the caller processes it again. The check is a HEAD before tagging (S3 tagging has
        no condition) and S3's conditional delete (If-Match) when deleting."""
        try:
            if self.disposition == "delete":
                await store.delete(key, etag=etag)
                return []
            return await self._tag(store, key, {STATUS_TAG: "processed"}, etag=etag, remove=(ERROR_TAG,))
        except ObjectNotFound:
            return []  # already deleted (delete mode, or by its owner): nothing left to mark
        except ObjectChanged:
            return None

    async def _tag(
        self, store: ObjectStore, key: str, tags: dict[str, str], *, etag: str | None, remove: tuple[str, ...] = ()
    ) -> list[str]:
        """Merge our tags into the raw object's while it still holds `etag` (None: any version).
        Raises ObjectChanged when another upload replaced it; returns the tags that found no room."""
        if etag is None:
            existing = await store.get_tags(key)
        else:  # both reads in one round trip; the tags are only used if the version matches
            current, existing = await asyncio.gather(store.etag(key), store.get_tags(key))
            if current is not None and current != etag:
                raise ObjectChanged(f"{key} is no longer the version judged")
        merged = merge_tags(existing, tags, remove)
        await store.set_tags(key, tags, remove=remove, existing=existing)
        return [k for k, v in tags.items() if merged.get(k) != v]

    async def _reject(
        self,
        store: ObjectStore,
        ref: ObjectRef,
        error: PipelineError,
        started: float,
        *,
        etag: str | None,
        bytes_in: int = 0,
        owner: str | None = None,
    ) -> Outcome | None:
        """Tag the raw object `failed` with the code, only while it is the version judged (`etag`;
        None for a key refused whatever it holds). None when a newer upload replaced it meanwhile:
        the caller judges that one instead."""
        dropped: list[str] = []
        try:
            dropped = await self._tag(store, ref.key, {STATUS_TAG: "failed", ERROR_TAG: error.code}, etag=etag)
        except ObjectNotFound:
            pass
        except ObjectChanged:
            return None
        return Outcome(
            "failed",
            ref.key,
            reason=error.message,
            error_code=error.code,
            bytes_in=bytes_in,
            total_ms=(perf_counter() - started) * 1000,
            tags_dropped=dropped,
            owner=owner,
        )


async def _read_if_any(store: ObjectStore, key: str) -> RawObject | None:
    """The object and its ETag, or None when the key does not exist (also on a bare 404)."""
    try:
        return await store.read(key)
    except ObjectNotFound:
        return None


def _with_variants(
    processor: ImageProcessor, variants: list[VariantConfig], *, rendition: int | None = None
) -> ImageProcessor:
    """A processor with `processor`'s settings (limits, colour, metadata, background, rendition)
    and other specs."""
    return ImageProcessor(
        variants,
        strip_metadata=processor.strip_metadata,
        background_color=processor.background_color,
        limits=processor.limits,
        keep_icc_profile=processor.keep_icc_profile,
        rendition=processor.rendition if rendition is None else rendition,
        face_detector=processor.face_detector,
    )
