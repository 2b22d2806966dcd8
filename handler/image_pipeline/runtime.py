"""What lives for a container's life: validated settings, one event loop, one S3 client, the
service. Created once at cold start; every invocation and record reuses it.

The Lambda container keeps its client until it is frozen and ended; any other process that ends
(`image-pipeline invoke`, a backfill worker, a bench, a test) has it closed: by `close()`, or by the
exit hook registered when the first connection opens (so a failure on the way out closes it too)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import OutOfTime
from .faces import detector_for
from .moderation import gate_from
from .notify import Notifier
from .pool import ProcessingPool
from .processor import ImageProcessor
from .service import ImageService, ObjectRef, Outcome
from .settings import Settings
from .storage import ObjectStore
from .storage.s3 import S3Connection

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        processor = ImageProcessor(
            settings.variants,
            limits=settings.limits,
            keep_icc_profile=settings.keep_icc_profile,
            face_detector=detector_for(settings.face_detection),  # the engine's own imports wait for its first image
        )
        self.service = ImageService(
            processor,
            raw_prefix=settings.raw_prefix,
            processed_prefix=settings.processed_prefix,
            disposition=settings.raw_disposition,
            # One record at a time: it waits for its slot (a cut-off record's image) without bound.
            pool=ProcessingPool.of_process(settings.process_concurrency),
            gate=gate_from(settings),  # MODERATION: judged before anything is published
        )
        # The aioboto3 client is bound to the loop that opened it, so the loop is kept too.
        self._runner = asyncio.Runner()
        self._connection: S3Connection | None = None
        self._closed = False
        self.notifier = Notifier.from_settings(settings)  # None unless EVENT_BUS_NAME is set

    def handle(self, ref: ObjectRef, timeout_s: float | None = None) -> Outcome:
        """One object; with `timeout_s`, all of its work (S3 calls and the image) must end by then
        or it is cut off and reported as `OutOfTime` (outputs are written before the manifest, so a
        cut leaves nothing that claims to be done, and the retry finishes it). An image cut off
        finishes in its thread and its result is dropped: nothing is written after the cut."""
        return self.run(lambda: self._handle(ref), timeout_s, what=ref.key)

    def run(self, work: Callable[[], Awaitable[T]], timeout_s: float | None = None, *, what: str = "request") -> T:
        """`work()` on the container's loop; with `timeout_s`, cut off after it (`OutOfTime`)."""
        return self._runner.run(self._bounded(work, timeout_s, what))

    async def _bounded(self, work: Callable[[], Awaitable[T]], timeout_s: float | None, what: str) -> T:
        if timeout_s is None:
            return await work()
        deadline = asyncio.timeout(max(timeout_s, 0))
        try:
            async with deadline:
                return await work()
        except TimeoutError:
            if not deadline.expired():
                raise
            raise OutOfTime(f"{what}: not finished in the {timeout_s:.1f} s left before the reserve") from None

    async def store(self, bucket: str) -> ObjectStore:
        """The bucket's store, through the container's one S3 client (opened on first use, not at
        import: no network at cold start)."""
        if self._connection is None:
            self._connection = await S3Connection.open(
                endpoint_url=self.settings.s3_endpoint_url,
                cache_control=self.settings.cache_control,
                max_attempts=self.settings.s3_max_attempts,
            )
            atexit.register(self.close)
        return self._connection.store(bucket)

    async def _handle(self, ref: ObjectRef) -> Outcome:
        store = await self.store(ref.bucket)
        if ref.kind == "removed":
            return await self.service.remove(store, ref.key)
        outcome = await self.service.handle(store, ref)
        if self.notifier is not None:  # a failed publish raises PublishFailed: the record is retried
            await self.notifier.publish(store, ref, outcome)
        return outcome

    def close(self) -> None:
        """Close the S3 and EventBridge clients and the loop; idempotent."""
        atexit.unregister(self.close)
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # at exit: the loop still running in another thread
            self._runner.run(self._close_clients())
            self._runner.close()

    async def _close_clients(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
