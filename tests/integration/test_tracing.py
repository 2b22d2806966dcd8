"""With X-Ray tracing active, as the template deploys it, images must still be processed.

Runs a fresh process with Lambda's tracing environment (Powertools only traces inside Lambda),
so the Tracer is configured exactly as at a real cold start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_event
from tests.images import photo

SCRIPT = """
import json, sys
from image_pipeline.cli import LocalContext
import image_pipeline.handler as handler
results = [handler.lambda_handler(json.loads(line), LocalContext()) for line in sys.stdin]
handler.runtime.close()
print(json.dumps(results))
"""


def test_images_are_processed_with_tracing_active(s3, bucket, tmp_path):
    keys = [f"raw/traced/{i}.jpg" for i in range(3)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=photo(400, 300))
    events = [json.dumps(load_event("s3-put.json", bucket=bucket, keys=[key])) for key in keys]
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    env.update(
        LAMBDA_TASK_ROOT=str(tmp_path),
        AWS_LAMBDA_FUNCTION_NAME="image-pipeline-test",
        _X_AMZN_TRACE_ID="Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        AWS_XRAY_DAEMON_ADDRESS="127.0.0.1:2000",
        AWS_XRAY_CONTEXT_MISSING="LOG_ERROR",
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input="\n".join(events),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["results"][0]["status"] for r in results] == ["processed"] * 3
