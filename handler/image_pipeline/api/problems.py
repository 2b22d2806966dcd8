"""RFC 9457 problem details, the one way the API answers what it will not do.

Every detail is written for the caller: no object reprs, memory addresses, bucket names or
endpoint URLs (storage failures are logged in full and answered in words)."""

from __future__ import annotations

from litestar.plugins.problem_details import ProblemDetailsException

from ..errors import without_reprs

NO_SUCH_IMAGE = "no such image"


def problem(
    status: int, detail: str, error_code: str | None = None, headers: dict[str, str] | None = None
) -> ProblemDetailsException:
    extra = {"error_code": error_code} if error_code else None
    return ProblemDetailsException(detail=without_reprs(detail), status_code=status, extra=extra, headers=headers)


def not_found() -> ProblemDetailsException:
    """The one answer for an id that is malformed, missing or someone else's: ids leak nothing."""
    return problem(404, NO_SUCH_IMAGE)
