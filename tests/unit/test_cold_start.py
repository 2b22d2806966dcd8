"""A cold start imports only what every invocation needs (timing lives in bench/coldstart.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

DEFERRED = ["pillow_heif", "litestar", "aioboto3", "aiobotocore", "aiohttp", "moto", "numpy", "requests"]


def test_importing_the_handler_defers_heavy_and_optional_modules(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    env.update(LAMBDA_TASK_ROOT=str(tmp_path), AWS_LAMBDA_FUNCTION_NAME="cold-start-test")  # tracing on, as in Lambda
    code = (
        "import json, sys, image_pipeline.handler\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "{m for m in sys.modules if m.startswith('PIL.')})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "image_pipeline" in loaded
    assert loaded.isdisjoint(DEFERRED), sorted(loaded & set(DEFERRED))
    assert "PIL.AvifImagePlugin" not in loaded  # image plugins load when an image of that type arrives
