"""A cold start imports only what every invocation needs (timing lives in bench/coldstart.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def last_json_line(code: str, env: dict[str, str] | None = None):
    """Run `code` in a fresh interpreter (a cold start) and return the JSON its last line prints."""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# numpy, ai_edge_litert (LiteRT) and the face model load on the first image the local face detector sees.
DEFERRED = [
    "pillow_heif",
    "litestar",
    "aioboto3",
    "aiobotocore",
    "aiohttp",
    "moto",
    "numpy",
    "requests",
    "ai_edge_litert",
]


def test_importing_the_handler_defers_heavy_and_optional_modules(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    env.update(LAMBDA_TASK_ROOT=str(tmp_path), AWS_LAMBDA_FUNCTION_NAME="cold-start-test")  # tracing on, as in Lambda
    code = (
        "import json, sys, image_pipeline.handler\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "{m for m in sys.modules if m.startswith('PIL.')})))"
    )
    loaded = set(last_json_line(code, env))
    assert "image_pipeline" in loaded
    assert loaded.isdisjoint(DEFERRED), sorted(loaded & set(DEFERRED))
    assert "PIL.AvifImagePlugin" not in loaded  # image plugins load when an image of that type arrives


def test_first_image_loads_only_the_plugins_it_uses():
    """Pillow imports all ~40 plugins on the first open/save of a format it has not registered;
    the processor imports just the ones a JPEG → WebP + JPEG job needs (not the WebP decoder)."""
    code = (
        "import io, json, sys\n"
        "from PIL import Image\n"
        "from image_pipeline import ImageProcessor\n"
        "from image_pipeline.settings import DEFAULTS, parse_variants\n"
        "b = io.BytesIO(); Image.new('RGB', (640, 480), 'red').save(b, 'JPEG')\n"
        "out = ImageProcessor(parse_variants(DEFAULTS['VARIANTS'])).process(b.getvalue())\n"
        "print(json.dumps({'formats': [v.format.value for v in out],"
        " 'plugins': sorted(m for m in sys.modules if m.startswith('PIL.') and m.endswith('ImagePlugin')),"
        " 'webp_decoder': 'image_pipeline.processor.webp' in sys.modules or 'ctypes' in sys.modules}))"
    )
    result = last_json_line(code)
    assert result["formats"] == ["webp", "webp", "jpeg"]
    assert "PIL.WebPImagePlugin" in result["plugins"]
    assert not {"PIL.AvifImagePlugin", "PIL.TiffImagePlugin", "PIL.PsdImagePlugin"} & set(result["plugins"])
    assert not result["webp_decoder"]  # libwebp through ctypes is looked up on the first WebP *input*


def test_the_pipeline_never_imports_the_upload_api_even_with_completion_events(tmp_path):
    """The API (Litestar, Mangum, uvicorn) lives in its own package and Lambda layer; completion
    events open their EventBridge client on the first publish, not at import."""
    env = {**os.environ, "LAMBDA_TASK_ROOT": str(tmp_path), "EVENT_BUS_NAME": "image-events"}
    code = (
        "import json, sys, image_pipeline.handler as h\n"
        "assert h.runtime.notifier is not None\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = set(last_json_line(code, env))
    assert "image_pipeline.notify" in loaded
    roots = {m.split(".")[0] for m in loaded}
    assert roots.isdisjoint({"litestar", "mangum", "uvicorn", "aioboto3", "aiobotocore"}), sorted(roots)
    assert not any(m.startswith("image_pipeline.api") for m in loaded)
