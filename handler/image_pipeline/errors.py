"""One error family with stable codes.

A code is a contract: it is written to the raw object's `image-pipeline-error` tag, logged and
counted, so codes are only ever added, never renamed. `permanent` says whether retrying can help:
a bad image stays bad (tag it and move on), and so does a store that refuses us (access denied, no
such bucket, an archived object, a KMS key we may not use: `storage_denied`, logged as an error
and counted, never retried); a throttled, failing or unreachable store may pass (`storage_error`:
report it so it is retried).

    PipelineError
    ├── ImageRejected (permanent): empty_file, unsupported_type, too_large, ... name_conflict
    ├── StoreError: anything the store said
    │   ├── StorageFailure (transient): storage_error
    │   ├── StorageDenied (permanent): storage_denied
    │   └── ObjectNotFound, ObjectChanged (permanent; storage/base.py): answers, not failures
    ├── ModerationUnavailable (transient): moderation_unavailable
    ├── OutOfTime (transient): out_of_time
    └── Busy (transient): busy — every image slot of the process taken (the API's 503)
"""

from __future__ import annotations

import re

# `<_io.BytesIO object at 0x7f…>` and the like, which library messages carry (Pillow's "cannot
# identify image file <…>"): an internal object and a memory address, never for a response.
_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def without_reprs(text: str) -> str:
    """`text` without object reprs that give memory addresses."""
    return _REPR.sub("", text)


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose. Its message is shown to users (problem
    details, completion events), so object reprs are taken out of it."""

    code = "pipeline_error"
    permanent = True

    def __init__(self, message: str) -> None:
        message = without_reprs(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ImageRejected(PipelineError):
    """The input can never become variants; retrying will not help."""

    etag: str | None = None  # the version judged, when the store told us (see TooLarge.over)
    metadata: dict[str, str] | None = None  # that version's metadata (its owner), when known


class EmptyFile(ImageRejected):
    code = "empty_file"


class UnsupportedType(ImageRejected):
    code = "unsupported_type"


class TooLarge(ImageRejected):
    code = "too_large"

    @classmethod
    def over(cls, size: int, limit: int, etag: str | None = None, metadata: dict[str, str] | None = None) -> TooLarge:
        error = cls(f"{size} bytes is over the {limit}-byte limit")
        error.etag, error.metadata = etag, metadata
        return error


class TooManyPixels(ImageRejected):
    code = "too_many_pixels"


class TooManyFrames(ImageRejected):
    code = "too_many_frames"


class CorruptImage(ImageRejected):
    code = "corrupt_image"


class InvalidKey(ImageRejected):
    code = "invalid_key"


class NameConflict(ImageRejected):
    """Another upload with the same name but another extension already owns the output prefix."""

    code = "name_conflict"


class Moderated(ImageRejected):
    """A reviewer rejected the upload after the moderation check held it (moderation/)."""

    code = "moderated"


class ModerationUnavailable(PipelineError):
    """The moderation engine gave no verdict (an error, a timeout, throttled past its retries): the
    record is retried; after MODERATION_MAX_ATTEMPTS tries the image is held (fail closed)."""

    code = "moderation_unavailable"
    permanent = False


class StoreError(PipelineError):
    """Something the store answered or failed to do; see the subclasses for whether to retry."""

    code = "storage_error"
    permanent = False


class StorageFailure(StoreError):
    """S3 (or another store) failed after its own retries (throttling, 5xx, network, timeouts);
    the job must be retried later."""

    code = "storage_error"
    permanent = False


class StorageDenied(StoreError):
    """The store refuses the request and will keep refusing it until someone changes a setting:
    AccessDenied, NoSuchBucket, InvalidObjectState (an archived object), KMS key access. Not
    retried; logged as an error and counted, so an operator fixes the cause and replays."""

    code = "storage_denied"
    permanent = True


class OutOfTime(PipelineError):
    """Not enough invocation time left to finish a record safely; retry it later."""

    code = "out_of_time"
    permanent = False


class Busy(PipelineError):
    """Every image slot of this process (`PROCESS_CONCURRENCY`) stayed taken for the whole wait
    (`PROCESS_WAIT_MS`): nothing was stored; try again after `retry_after_s` (the API answers 503
    with `Retry-After`). Never raised where the wait is unbounded (Lambda, invoke, backfill)."""

    code = "busy"
    permanent = False

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(ValueError):
    """Settings from the environment are invalid; raised once, at cold start."""


ERROR_CODES = tuple(
    cls.code
    for cls in (
        EmptyFile,
        UnsupportedType,
        TooLarge,
        TooManyPixels,
        TooManyFrames,
        CorruptImage,
        InvalidKey,
        NameConflict,
        Moderated,
        ModerationUnavailable,
        StorageFailure,
        OutOfTime,
        StorageDenied,
        Busy,
    )
)
