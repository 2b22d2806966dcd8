"""What lives for a container's life: validated settings, one event loop, one S3 client, the
service. Created once at cold start; every invocation and record reuses it."""

from __future__ import annotations

import asyncio

from .notify import Notifier
from .processor import ImageProcessor
from .service import ImageService, ObjectRef, Outcome
from .settings import Settings
from .storage.s3 import S3Connection


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        processor = ImageProcessor(
            settings.variants, limits=settings.limits, keep_icc_profile=settings.keep_icc_profile
        )
        self.service = ImageService(
            processor,
            raw_prefix=settings.raw_prefix,
            processed_prefix=settings.processed_prefix,
            disposition=settings.raw_disposition,
        )
        # The aioboto3 client is bound to the loop that opened it, so the loop is kept too.
        self._runner = asyncio.Runner()
        self._connection: S3Connection | None = None
        self.notifier = Notifier.from_settings(settings)  # None unless EVENT_BUS_NAME is set

    def handle(self, ref: ObjectRef) -> Outcome:
        return self._runner.run(self._handle(ref))

    async def _handle(self, ref: ObjectRef) -> Outcome:
        if self._connection is None:  # first record, not import: no network at cold start
            self._connection = await S3Connection.open(
                endpoint_url=self.settings.s3_endpoint_url,
                cache_control=self.settings.cache_control,
                max_attempts=self.settings.s3_max_attempts,
            )
        outcome = await self.service.handle(self._connection.store(ref.bucket), ref)
        if self.notifier is not None:  # a failed publish raises PublishFailed: the record is retried
            await self.notifier.publish(self._connection.store(ref.bucket), ref, outcome)
        return outcome

    def close(self) -> None:
        if self.notifier is not None:
            self._runner.run(self.notifier.close())
        if self._connection is not None:
            self._runner.run(self._connection.close())
            self._connection = None
        self._runner.close()
