"""Handler benchmark: N S3 events through the real `lambda_handler` against a moto S3 server.

    python bench/handler.py [--events 50] [--image PATH | --corpus DIR] [--size 4000x3000]
                            [--no-tracing] [--json OUT]

What runs: the parent starts moto's ThreadedMotoServer in a process of its own (so S3's request
handling does not share the handler's GIL, as it would not in AWS), creates a bucket, uploads
N + 1 raw objects (distinct keys: a replayed key would be skipped by the manifest check) and
then runs ONE fresh worker process — a Lambda container — with the template's environment plus
the Lambda runtime's variables (tracing on, X-Ray daemon address pointed at an unread local UDP
port, a new trace header per invocation; --no-tracing sets POWERTOOLS_TRACE_DISABLED=true).
Powertools' log and metric lines go to /dev/null (in Lambda they go to a pipe).

The worker times `import image_pipeline.handler`, then the first event (cold: S3 client
creation, first connection), then N warm events, one S3 notification (one record) each, as S3
invokes the function. Per event it records the handler's wall time, the Outcome (runtime.handle
is wrapped, nothing else is touched) and the duration of each S3Store call (class methods
wrapped with timers).

Table (warm events only, except the cold-start column):
  p50/p95 per-event latency = lambda_handler wall time
  images/s                  = events / sum of wall times (one container, sequential)
  peak RSS                  = the worker's VmHWM (interpreter + libraries + image buffers)
  cold start                = import + first event
  S3 overhead               = handler wall time − Outcome.processing_ms (everything that is not
                              the processor: S3 calls, Powertools, event parsing, manifest JSON)
and a breakdown of that overhead by step, plus the moto floor (a sequential small request on
the same client) so what is moto's own latency can be told from ours.

Default image: a 12 MP (4000×3000) photo-like JPEG generated here (noise + gradients + shapes,
q90); --image PATH uses a file, --corpus DIR cycles through a directory's jpg/png/webp files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
EXTS = {".jpg", ".jpeg", ".png", ".webp"}


# --------------------------------------------------------------------------------------- helpers
def gradients_and_shapes(width: int, height: int, seed: int = 7):
    """Smooth colour gradients and 40 soft shapes: the base of the generated photo-like images."""
    import random

    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    size = (width, height)
    g = Image.linear_gradient("L")
    image = Image.merge("RGB", (g.resize(size), g.rotate(90).resize(size), Image.radial_gradient("L").resize(size)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(width // 20, width // 4), rng.randrange(height // 20, height // 4)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(max(1, width // 800)))


def photo_jpeg(width: int = 4000, height: int = 3000, quality: int = 90, seed: int = 7) -> bytes:
    """Photo-like JPEG: smooth colour gradients, soft shapes, fine grain (compresses like a photo:
    ~0.3-0.4 bytes/pixel at q90, where a plain gradient would be ~0.05)."""
    from PIL import Image, ImageFilter

    size = (width, height)
    image = gradients_and_shapes(width, height, seed)
    grain = Image.effect_noise(size, 28).filter(ImageFilter.GaussianBlur(0.6))
    image = Image.blend(image, Image.merge("RGB", (grain, grain, grain)), 0.18)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_event(bucket: str, key: str, etag: str, size: int) -> dict:
    """events/s3-put.json retargeted (the key URL-encoded as S3 sends it)."""
    from urllib.parse import quote_plus

    event = json.loads((ROOT / "events" / "s3-put.json").read_text())
    record = event["Records"][0]["s3"]
    record["bucket"]["name"] = bucket
    record["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["object"].update(key=quote_plus(key, safe="/"), eTag=etag, size=size)
    return event


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoProcess:
    """moto's ThreadedMotoServer in its own process, on 127.0.0.1; yields the endpoint URL."""

    CODE = (
        "import logging, sys, time\n"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
        "from moto.server import ThreadedMotoServer\n"
        "s = ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False)\n"
        "s.start()\n"
        "sys.stdin.read()\n"  # until the parent closes stdin
        "s.stop()\n"
    )

    def __init__(self, cpus: str | None = None) -> None:
        self.port = _free_port()
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        cmd = [PYTHON, "-c", self.CODE, str(self.port)]
        if self.cpus:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return f"http://127.0.0.1:{self.port}"
            except OSError as exc:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited") from exc
                time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p95 of 50 = the 48th value)."""
    import math

    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def peak_rss_kb() -> int:
    """VmHWM: this process image's own peak (ru_maxrss carries over fork+exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------- worker
def worker(spec_path: str) -> None:
    """One Lambda container: import, first event, warm events. Writes a JSON result file."""
    spec = json.loads(Path(spec_path).read_text())
    hidden = {n for n in os.environ.get("BENCH_HIDE_MODULES", "").split(",") if n}
    if hidden:  # packages the SAM artefact does not ship (see bench/coldstart.py)

        class _Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in hidden:
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, _Hide())
    devnull = os.open(os.devnull, os.O_WRONLY)
    if not os.environ.get("BENCH_SHOW_LOGS"):
        os.dup2(devnull, 1)  # Powertools log + EMF lines

    t0 = time.perf_counter()
    import image_pipeline.handler as h

    import_ms = (time.perf_counter() - t0) * 1000
    rss_after_import = peak_rss_kb()
    from image_pipeline.cli import LocalContext
    from image_pipeline.storage.s3 import S3Store

    calls: list[tuple[str, str, float, float]] = []  # (op, key, start, end)

    def timed(name: str, fn):
        async def wrapper(self, key, *args, **kwargs):
            start = time.perf_counter()
            try:
                return await fn(self, key, *args, **kwargs)
            finally:
                calls.append((name, key, start, time.perf_counter()))

        return wrapper

    for op in ("read_optional", "read", "write", "etag", "get_tags", "set_tags", "delete"):
        setattr(S3Store, op, timed(op, getattr(S3Store, op)))

    outcomes = []
    original_handle = h.runtime.handle

    def handle(ref):
        try:
            outcome = original_handle(ref)
        except Exception as exc:
            outcomes.append(SimpleNamespace(status="retry", reason=f"{type(exc).__name__}: {exc}"))
            raise
        outcomes.append(outcome)
        return outcome

    h.runtime.handle = handle

    rows = []
    failures = []
    for i, event in enumerate(spec["events"]):
        os.environ["_X_AMZN_TRACE_ID"] = f"Root=1-5759e988-bd862e3fe1be46a9942{i:05d};Parent=53995c3f42cd8ad8;Sampled=1"
        calls.clear()
        outcomes.clear()
        start = time.perf_counter()
        try:
            h.lambda_handler(event, LocalContext())
        except h.RetryLater:  # a storage_error: Lambda would retry the event; its outcome is recorded below
            pass
        wall = (time.perf_counter() - start) * 1000
        (outcome,) = outcomes
        if outcome.status != "processed":
            failures.append({"event": i, "status": outcome.status, "error": outcome.reason[:300]})
            continue
        writes = [c for c in calls if c[0] == "write"]
        variant_writes = [c for c in writes if not c[1].endswith("manifest.json")]
        manifest_writes = [c for c in writes if c[1].endswith("manifest.json")]

        def dur(cs):
            return (max(c[3] for c in cs) - min(c[2] for c in cs)) * 1000 if cs else 0.0

        steps = {
            "manifest GET + raw GET (concurrent)": dur([c for c in calls if c[0] in ("read_optional", "read")]),
            "variant PUTs (concurrent)": dur(variant_writes),
            "manifest PUT": dur(manifest_writes),
            "HEAD (still that upload?) + tagging GET (concurrent)": dur(
                [c for c in calls if c[0] in ("etag", "get_tags")]
            ),
            "tagging PUT (or conditional DELETE)": dur([c for c in calls if c[0] in ("set_tags", "delete")]),
        }
        rows.append(
            {
                "event": i,
                "wall_ms": wall,
                "processing_ms": outcome.processing_ms,
                "total_ms": outcome.total_ms,
                "bytes_in": outcome.bytes_in,
                "steps": steps,
            }
        )

    # moto floor: sequential small requests on the handler's own client and loop
    floor = []
    conn = h.runtime._connection
    bucket, key = spec["floor_object"]

    async def one():
        s = time.perf_counter()
        await conn.client.get_object_tagging(Bucket=bucket, Key=key)
        return (time.perf_counter() - s) * 1000

    for _ in range(30):
        floor.append(h.runtime._runner.run(one()))
    h.runtime.close()
    Path(spec["result"]).write_text(
        json.dumps(
            {
                "import_ms": import_ms,
                "rss_after_import_kb": rss_after_import,
                "peak_rss_kb": peak_rss_kb(),
                "rows": rows,
                "floor_ms": floor,
                "failures": failures,
            }
        )
    )


# ---------------------------------------------------------------------------------------- parent
def worker_env(endpoint: str, tracing: bool, memory_mb: int = 1024) -> dict[str, str]:
    sys.path.insert(0, str(HERE))
    from coldstart import lambda_env  # bench/coldstart.py: template + Lambda runtime env

    extra = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb)}
    if not tracing:
        extra["POWERTOOLS_TRACE_DISABLED"] = "true"
    return lambda_env(hide=True, extra=extra)


def prepare(endpoint: str, images: list[tuple[str, bytes]], n_events: int, bucket: str) -> dict:
    """Upload first + N raw objects (cycling through `images`); the events that name them."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    )
    s3.create_bucket(Bucket=bucket)
    events, names = [], []
    for i in range(n_events + 1):
        name, data = images[i % len(images)] if i else images[0]
        stem = Path(name).stem.replace(" ", "_")
        key = f"raw/bench/{i:04d}-{stem}{Path(name).suffix.lower()}"
        etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
        events.append(make_event(bucket, key, etag, len(data)))
        names.append(name)
    floor_key = "raw/floor.txt"
    s3.put_object(Bucket=bucket, Key=floor_key, Body=b"x")
    return {"events": events, "names": names, "floor_object": [bucket, floor_key]}


def run_worker(spec: dict, env: dict[str, str], prefix: list[str] | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "result": str(Path(tmp) / "result.json")}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [*(prefix or []), PYTHON, str(Path(__file__).resolve()), "--worker", str(spec_path)]
        proc = subprocess.run(cmd, env=env, cwd=tmp, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(Path(spec["result"]).read_text())
    result["names"] = spec["names"]
    return result


def load_images(args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], str]:
    if args.corpus:
        files = sorted(p for p in Path(args.corpus).iterdir() if p.suffix.lower() in EXTS)
        if not files:
            raise SystemExit(f"no images in {args.corpus}")
        return [(p.name, p.read_bytes()) for p in files], f"corpus {args.corpus} ({len(files)} files)"
    if args.image:
        return [(args.image.name, args.image.read_bytes())], str(args.image)
    w, h = (int(v) for v in args.size.split("x"))
    data = photo_jpeg(w, h)
    return [(f"photo-{w}x{h}.jpg", data)], f"generated {w}×{h} JPEG q90 ({len(data) / 1e6:.1f} MB)"


def summarize(result: dict) -> dict | None:
    warm = [r for r in result["rows"] if r["event"] > 0]
    first = next((r for r in result["rows"] if r["event"] == 0), None)
    if not warm:
        return None
    first = first or {"wall_ms": float("nan")}  # the cold event failed: cold start unknown
    walls = [r["wall_ms"] for r in warm]
    overhead = [r["wall_ms"] - r["processing_ms"] for r in warm]
    return {
        "events": len(warm),
        "p50": statistics.median(walls),
        "p95": pct(walls, 95),
        "mean": statistics.fmean(walls),
        "proc_p50": statistics.median(r["processing_ms"] for r in warm),
        "proc_p95": pct([r["processing_ms"] for r in warm], 95),
        "proc_mean": statistics.fmean(r["processing_ms"] for r in warm),
        "ips": len(warm) / (sum(walls) / 1000),
        "peak_rss_mb": result["peak_rss_kb"] / 1024,
        "import_ms": result["import_ms"],
        "first_ms": first["wall_ms"],
        "cold_ms": result["import_ms"] + first["wall_ms"],
        "ovh_p50": statistics.median(overhead),
        "ovh_p95": pct(overhead, 95),
        "service_ovh_p50": statistics.median(r["total_ms"] - r["processing_ms"] for r in warm),
        "floor_p50": statistics.median(result["floor_ms"]),
        "floor_p95": pct(result["floor_ms"], 95),
    }


def print_tables(result: dict, label: str, tracing: str) -> None:
    s = summarize(result)
    failures = result.get("failures", [])
    if failures:
        print(
            f"**{len(failures)} of {len(failures) + len(result['rows'])} events NOT processed** "
            f"(tracing {tracing}); first: `{failures[0]}`\n"
        )
    if s is None:
        return
    warm = [r for r in result["rows"] if r["event"] > 0]
    print(f"### Handler: {s['events']} warm events + 1 cold, {label}, tracing {tracing}\n")
    print(
        "| events | p50 ms | p95 ms | images/s | peak RSS MB | cold start ms (import + 1st event) "
        "| S3 overhead p50 ms | S3 overhead p95 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {s['events']} | {s['p50']:.0f} | {s['p95']:.0f} | {s['ips']:.2f} | {s['peak_rss_mb']:.0f} "
        f"| {s['cold_ms']:.0f} ({s['import_ms']:.0f} + {s['first_ms']:.0f}) "
        f"| {s['ovh_p50']:.1f} | {s['ovh_p95']:.1f} |"
    )
    print(
        f"\nprocessor (Outcome.processing_ms): p50 {s['proc_p50']:.0f} ms, p95 {s['proc_p95']:.0f} ms; "
        f"S3 overhead = handler wall − processing_ms; target ≤ 60 ms/event: "
        f"{'met' if s['ovh_p50'] <= 60 else 'NOT met'} (p50)\n"
    )
    print("Where the overhead goes (warm events, ms):\n")
    print("| step | p50 | p95 |")
    print("|---|---:|---:|")
    for step in warm[0]["steps"]:
        vals = [r["steps"][step] for r in warm]
        print(f"| {step} | {statistics.median(vals):.1f} | {pct(vals, 95):.1f} |")
    rest = [r["wall_ms"] - r["processing_ms"] - sum(r["steps"].values()) for r in warm]
    print(
        "| rest (Powertools, event parsing, manifest JSON, loop) "
        f"| {statistics.median(rest):.1f} | {pct(rest, 95):.1f} |"
    )
    print(f"| *moto floor: one small sequential request* | {s['floor_p50']:.1f} | {s['floor_p95']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50, help="warm events (one cold event runs first)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path)
    source.add_argument("--corpus", type=Path)
    parser.add_argument("--size", default="4000x3000", help="generated image size (default 12 MP)")
    parser.add_argument("--no-tracing", action="store_true", help="POWERTOOLS_TRACE_DISABLED=true")
    parser.add_argument("--json", type=Path, help="also write the raw per-event results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0

    images, label = load_images(args)
    print(f"load average before: {loadavg()} (cores: {os.cpu_count()})", file=sys.stderr)
    with MotoProcess() as endpoint:
        spec = prepare(endpoint, images, args.events, bucket="bench-handler")
        result = run_worker(spec, worker_env(endpoint, tracing=not args.no_tracing))
    print(f"load average after: {loadavg()}", file=sys.stderr)
    tracing = "off" if args.no_tracing else "on"
    print_tables(result, label, tracing=tracing)
    if args.json:
        args.json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
