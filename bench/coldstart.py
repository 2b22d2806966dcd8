"""Cold-start benchmark: what a new Lambda container pays before and at its first image.

    python bench/coldstart.py [--runs 7] [--top 10] [--venv-as-is] [--no-first-event]

1. Import: `python -X importtime -c 'import image_pipeline.handler'` in a fresh process per run,
   with the environment the template sets (tracing on: POWERTOOLS_TRACE_DISABLED unset) plus the
   variables the Lambda runtime itself sets (LAMBDA_TASK_ROOT, AWS_REGION, ...). Without
   LAMBDA_TASK_ROOT Powertools treats the process as "not in Lambda" and disables tracing, and the
   X-Ray SDK picks its centralized sampler, which builds an X-Ray botocore client at import
   (~150 ms that a real Lambda never pays) — so the runtime variables are needed to measure what
   Lambda runs. Reported: median / min / max of the `image_pipeline.handler` cumulative import
   time over the runs, and the top-N cumulative imports of the median run (direct children of
   the handler and their heavy descendants, as -X importtime prints them).

   The dev venv also holds packages the SAM artefact does not ship (moto's `requests`). X-Ray's
   patch_all() patches every supported library it can import, so in the venv it imports
   `requests` (~30 ms) — a Lambda built by `sam build` from handler/requirements.txt does not.
   By default those packages are hidden from the child (a meta-path finder refuses them) so the
   number is the artefact's; --venv-as-is measures the venv unmodified.

2. First event: in another fresh process (same env, X-Ray daemon address pointed at a local UDP
   port nobody reads, a trace header set as Lambda sets it), a moto server in its own process,
   one 1200×850 JPEG: import, then the first `lambda_handler` call, then a second call on a
   second object. first − second = the first invocation's extra cost (aioboto3 session + S3
   client creation: service model and endpoint rules loaded from JSON, the aiohttp connector,
   the first TCP connection). Client creation is also timed on its own (S3Connection.open).

Stdout: markdown tables. Nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

# template.yaml → ImagePipelineFunction.Environment.Variables: the settings' defaults (a unit test
# keeps the template's defaults equal to them) plus Powertools' names.
sys.path.insert(0, str(ROOT / "handler"))
from image_pipeline.settings import DEFAULTS  # noqa: E402

TEMPLATE_ENV = {
    **DEFAULTS,
    "POWERTOOLS_SERVICE_NAME": "image-pipeline",
    "POWERTOOLS_METRICS_NAMESPACE": "ImagePipeline",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
# What the Lambda python3.12 runtime adds (Tracing: Active → the X-Ray daemon address).
RUNTIME_ENV = {
    "LAMBDA_TASK_ROOT": "/var/task",
    "AWS_LAMBDA_FUNCTION_NAME": "image-pipeline",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
}
# Present in the dev venv (moto's dependencies), absent from the `sam build` artefact, and
# imported by X-Ray's patch_all() when importable.
NOT_IN_ARTEFACT = ("requests", "httpx", "pynamodb", "pymongo", "pymysql", "psycopg2", "psycopg", "pg8000", "mysql")

HIDE_PRELUDE = """
import sys
class _Hide:
    names = set({names!r})
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, _Hide())
"""


def lambda_env(*, hide: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "LAMBDA_"))}
    env.update(TEMPLATE_ENV)
    env.update(RUNTIME_ENV)
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    env["PYTHONPATH"] = str(ROOT / "handler")
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    if hide:
        env["BENCH_HIDE_MODULES"] = ",".join(NOT_IN_ARTEFACT)
    env.update(extra or {})
    return env


def prelude(hide: bool) -> str:
    return HIDE_PRELUDE.format(names=list(NOT_IN_ARTEFACT)) if hide else ""


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_once(hide: bool) -> tuple[float, list[tuple[str, int, int]]]:
    """ms to import the handler in a fresh process, and its import-time lines."""
    code = prelude(hide) + "import image_pipeline.handler\n"
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", code],
        env=lambda_env(hide=hide),
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"import failed:\n{proc.stderr[-3000:]}")
    rows = []
    total = 0.0
    seen_handler = False
    for line in proc.stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        cum_us, indent, name = int(m[2]), len(m[3]) - 1, m[4]  # m[1] is the module's own (self) time
        rows.append((name, cum_us, indent))
        if indent == 0 and name.startswith(("image_pipeline", "aws_lambda_powertools")):
            total += cum_us / 1000
        seen_handler = seen_handler or name == "image_pipeline.handler"
    if not seen_handler:
        raise SystemExit("image_pipeline.handler not in -X importtime output")
    return total, rows


def top_imports(rows: list[tuple[str, int, int]], n: int) -> list[tuple[str, int, int]]:
    """Top-N cumulative among the handler's direct imports and theirs (depth 1-2; deeper rows
    are mostly one chain of the same cost, e.g. aiobotocore.client → .args → .config → aiohttp)."""
    seen = set()
    out = []
    for name, cum, indent in sorted(rows, key=lambda r: -r[1]):
        if name == "image_pipeline.handler" or name in seen or not 1 <= indent // 2 <= 2:
            continue
        seen.add(name)
        out.append((name, cum, indent))
        if len(out) == n:
            break
    return out


FIRST_EVENT_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import image_pipeline.handler as h
t1 = time.perf_counter()
from image_pipeline.cli import LocalContext
from image_pipeline.storage.s3 import S3Connection
events = json.loads(sys.argv[1])
times = []
for i, event in enumerate(events):
    os.environ["_X_AMZN_TRACE_ID"] = f"Root=1-5759e988-bd862e3fe1be46a99427{i:04d};Parent=53995c3f42cd8ad8;Sampled=1"
    s = time.perf_counter()
    result = h.lambda_handler(event, LocalContext())
    times.append((time.perf_counter() - s) * 1000)
    assert result["results"][0]["status"] == "processed", result
# client creation alone, on a loop of its own (a second, independent connection)
import asyncio
async def open_close():
    s = time.perf_counter()
    c = await S3Connection.open(endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], cache_control="x", max_attempts=5)
    opened = (time.perf_counter() - s) * 1000
    await c.close()
    return opened
client_ms = asyncio.run(open_close())
h.runtime.close()
print("RESULT " + json.dumps({"import_ms": (t1 - t0) * 1000, "events_ms": times, "second_client_ms": client_ms}))
"""


def first_event_runs(runs: int, hide: bool) -> list[dict]:
    import boto3

    bench = load_bench_handler()
    MotoProcess, make_event, photo_jpeg = bench.MotoProcess, bench.make_event, bench.photo_jpeg

    data = photo_jpeg(1200, 850)
    results = []
    with MotoProcess() as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        for run in range(runs):
            bucket = f"coldstart-{run}"
            s3.create_bucket(Bucket=bucket)
            events = []
            for i in range(2):
                key = f"raw/cold/{run}/img-{i}.jpg"
                etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
                events.append(make_event(bucket, key, etag, len(data)))
            env = lambda_env(hide=hide, extra={"AWS_ENDPOINT_URL_S3": endpoint})
            proc = subprocess.run(
                [PYTHON, "-c", prelude(hide) + FIRST_EVENT_CHILD, json.dumps(events)],
                env=env,
                capture_output=True,
                text=True,
                cwd=tempfile.gettempdir(),
            )
            line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"first-event child failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(line.removeprefix("RESULT ")))
    return results


def load_bench_handler():
    """bench/handler.py as a module (its name would clash with the handler/ directory)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_handler", HERE / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_handler"] = module
    spec.loader.exec_module(module)
    return module


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per measurement (≥5)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--venv-as-is", action="store_true", help="do not hide packages the artefact lacks")
    parser.add_argument("--no-first-event", action="store_true")
    args = parser.parse_args(argv)
    hide = not args.venv_as_is
    print(f"load average before: {loadavg()}  (cores: {os.cpu_count()})", file=sys.stderr)

    import_once(hide)  # warm the page cache / .pyc files; not counted
    runs = [import_once(hide) for _ in range(max(args.runs, 5))]
    totals = [t for t, _ in runs]
    median = statistics.median(totals)
    median_run = min(runs, key=lambda r: abs(r[0] - median))
    print(
        f"### Cold start: `import image_pipeline.handler` ({len(runs)} fresh processes, "
        f"{'SAM-artefact packages' if hide else 'venv as is'}, tracing on)\n"
    )
    print("| median ms | min ms | max ms | target |")
    print("|---:|---:|---:|---|")
    print(
        f"| {median:.0f} | {min(totals):.0f} | {max(totals):.0f} | ≤ 400 ms: {'met' if median <= 400 else 'NOT met'} |"
    )
    print(f"\nTop {args.top} cumulative imports (run closest to the median, {median_run[0]:.0f} ms):\n")
    print("| module | cumulative ms | depth |")
    print("|---|---:|---:|")
    for name, cum, indent in top_imports(median_run[1], args.top):
        print(f"| `{name}` | {cum / 1000:.1f} | {indent // 2} |")
    print()

    if not args.no_first_event:
        res = first_event_runs(max(args.runs, 5), hide)
        imp = statistics.median(r["import_ms"] for r in res)
        first = statistics.median(r["events_ms"][0] for r in res)
        second = statistics.median(r["events_ms"][1] for r in res)
        extra = statistics.median(r["events_ms"][0] - r["events_ms"][1] for r in res)
        client = statistics.median(r["second_client_ms"] for r in res)
        print(
            f"### First invocation ({len(res)} fresh processes, 1200×850 JPEG, moto server in its own process, "
            "tracing on)\n"
        )
        print(
            "| import ms | 1st event ms | 2nd event ms | 1st − 2nd (first-invocation extra) ms "
            "| import + 1st event ms | S3Connection.open ms (warm imports) |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {imp:.0f} | {first:.0f} | {second:.0f} | {extra:.0f} | {imp + first:.0f} | {client:.0f} |")
    print(f"\nload average after: {loadavg()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
