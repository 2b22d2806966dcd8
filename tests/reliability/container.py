"""One simulated Lambda container for the load test: `python -m tests.reliability.container
<events.json>` imports the real handler (cold start), invokes it on each event in turn, and
prints one JSON line: the responses plus its RSS, thread, socket and event-loop counts.

The environment (AWS_ENDPOINT_URL_S3 and the rest) comes from the parent, as Lambda's would.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def resources() -> dict:
    gc.collect()
    loops = sum(isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed() for o in gc.get_objects())
    return {"threads": len(os.listdir("/proc/self/task")), "fds": len(os.listdir("/proc/self/fd")), "loops": loops}


def main(path: str) -> None:
    from image_pipeline import handler
    from image_pipeline.cli import LocalContext

    events = json.loads(open(path).read())
    null = open(os.devnull, "w")
    handler.logger.registered_handler.setStream(null)  # thousands of log lines: not the subject here
    responses, rss, first = [], [], None
    stdout, sys.stdout = sys.stdout, null  # metrics (EMF) lines too
    try:
        for event in events:
            responses.append(handler.lambda_handler(event, LocalContext()))
            rss.append(round(rss_mb(), 2))
            if first is None:
                first = resources()  # after the first invocation: client, pool and loop exist
    finally:
        sys.stdout = stdout
    last = resources()
    handler.runtime.close()
    print(json.dumps({"responses": responses, "rss_mb": rss, "first": first, "last": last, "closed": resources()}))


if __name__ == "__main__":
    main(sys.argv[1])
