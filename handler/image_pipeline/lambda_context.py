"""A stand-in for Lambda's context object, for running the handler locally (`image-pipeline
invoke`, `serve`'s local event source, tests). Its own module so that the CLI and the API's local
event source both use it without importing each other."""

from __future__ import annotations

import time
import uuid


class LocalContext:
    """The parts of Lambda's context object the handler reads."""

    def __init__(self, timeout_s: int = 120, memory_mb: int = 1024) -> None:
        self.function_name = "image-pipeline-local"
        self.function_version = "$LATEST"
        self.invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:image-pipeline-local"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = "/aws/lambda/image-pipeline-local"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
