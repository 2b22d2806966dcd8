"""One error family with stable codes.

A code is a contract: it is written to the raw object's `image-pipeline-error` tag, logged and
counted, so codes are only ever added, never renamed. `permanent` says whether retrying can help:
a bad image stays bad (tag it and move on), a storage failure may pass (report it so it is retried).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    code = "pipeline_error"
    permanent = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ImageRejected(PipelineError):
    """The input can never become variants; retrying will not help."""


class EmptyFile(ImageRejected):
    code = "empty_file"


class UnsupportedType(ImageRejected):
    code = "unsupported_type"


class TooLarge(ImageRejected):
    code = "too_large"

    @classmethod
    def over(cls, size: int, limit: int) -> TooLarge:
        return cls(f"{size} bytes is over the {limit}-byte limit")


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


class StorageFailure(PipelineError):
    """S3 (or another store) failed after its own retries; the job must be retried later."""

    code = "storage_error"
    permanent = False


class OutOfTime(PipelineError):
    """Not enough invocation time left to finish a record safely; retry it later."""

    code = "out_of_time"
    permanent = False


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
        StorageFailure,
        OutOfTime,
    )
)
