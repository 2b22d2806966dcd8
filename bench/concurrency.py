"""Concurrency benchmark: does `image-pipeline serve` keep answering while it processes big
uploads, how many images/s does it get through, and how much memory does it take?

    python bench/concurrency.py [--mode storage|s3] [--before DIR] [--rounds 2]
                                [--cases mixed8,big10] [--concurrency N] [--json OUT]

Each side runs `image-pipeline serve` in a subprocess of its own, started afresh for every case
(so its peak RSS, VmHWM, belongs to that case): `--storage DIR` (images in a directory) or, with
`--mode s3`, `--endpoint-url` to a moto server in another process (S3 outside the API process).
`--before DIR` adds a side that runs the code of another checkout's `handler/` (e.g. main:
`git archive main handler | tar -x -C /tmp/main`, then `--before /tmp/main/handler`); the sides
alternate case by case, round by round, on the same files.

Per case, after one small warm-up upload:
- sequential: the case's images sent one after another (the one-at-a-time rate);
- concurrent: all of them at once (one client thread each), while another process polls
  `GET /healthz` every 100 ms. A 503 is retried after its Retry-After (as a client should).
Reported: /healthz p50/p95/max latency during the concurrent burst, the burst's throughput
(images/s) and its ratio to the one-at-a-time rate, 503 answers, and the API process's VmHWM.

Cases (photo-like generated PNGs, cached in --cache):
  mixed8  4 × 9 MP (3674×2449, 5 MB) + 4 × 60 MP (9000×6666, 32 MB), 8 in flight
  big10   10 × 60 MP, 10 in flight
The processor's own per-image peak on the 60 MP PNG is measured in a separate process, so the
API's peak can be compared with PROCESS_CONCURRENCY × that peak + the server's base.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
SIZES = {"9mp": (3674, 2449), "60mp": (9000, 6666)}
CASES = {"mixed8": ["9mp", "60mp"] * 4, "big10": ["60mp"] * 10}

sys.path.insert(0, str(HERE))
from handler import MotoProcess, gradients_and_shapes, loadavg, pct  # noqa: E402  (bench/handler.py)


def photo_png(width: int, height: int, seed: int = 7) -> bytes:
    """Photo-like PNG: gradients, soft shapes, low-frequency grain (a 60 MP one is 32 MB, under
    MAX_INPUT_BYTES; bench/handler.py's fine grain would make it 90 MB)."""
    from PIL import Image

    size = (width, height)
    image = gradients_and_shapes(width, height, seed)
    noise = Image.effect_noise((width // 4, height // 4), 10).resize(size, Image.Resampling.BILINEAR)
    image = Image.blend(image, Image.merge("RGB", (noise, noise, noise)), 0.15)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def images(cache: Path) -> dict[str, bytes]:
    cache.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, (w, h) in SIZES.items():
        path = cache / f"photo-{w}x{h}.png"
        if not path.exists():
            print(f"generating {path} …", file=sys.stderr)
            path.write_bytes(photo_png(w, h))
        found[name] = path.read_bytes()
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """`image-pipeline serve` of one side in a subprocess; its URL."""

    def __init__(self, handler_dir: str | None, mode: str, endpoint: str | None, env: dict[str, str]) -> None:
        self.handler_dir, self.mode, self.endpoint, self.env = handler_dir, mode, endpoint, env
        self.proc: subprocess.Popen | None = None
        self.tmp = tempfile.TemporaryDirectory()

    def __enter__(self) -> Server:
        port = _free_port()
        env = {
            **os.environ,
            **self.env,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        env.pop("AWS_ENDPOINT_URL_S3", None)
        if self.handler_dir:  # another checkout's code first on the path
            env["PYTHONPATH"] = self.handler_dir
        where = {
            "storage": ["--storage", self.tmp.name],
            "s3": ["--endpoint-url", self.endpoint or ""],
            "embedded": [],
        }[self.mode]  # embedded: serve's own moto server, in its process
        if self.mode == "s3":
            env["BUCKET_NAME"] = f"bench-{port}"
        self.log = open(Path(self.tmp.name).with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "image_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *where],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp.name,
        )
        self.url = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("serve exited: " + Path(self.log.name).read_text()[-2000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit("serve did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        self.tmp.cleanup()


def upload(url: str, name: str, data: bytes, refused: list[int]) -> float:
    """POST /images until it is accepted (a 503 is retried after its Retry-After); seconds taken."""
    import httpx

    started = time.perf_counter()
    while True:
        response = httpx.post(url + "/images", files={"file": (name, data, "image/png")}, timeout=600)
        if response.status_code == 503 and "retry-after" in response.headers:
            refused.append(1)
            time.sleep(float(response.headers["retry-after"]))
            continue
        if response.status_code != 201:
            raise SystemExit(f"POST /images {name}: {response.status_code} {response.text[:500]}")
        return time.perf_counter() - started


def poll_health(url: str, stop, out) -> None:
    """In its own process: GET /healthz every 100 ms; each latency in ms."""
    import httpx

    latencies = []
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get(url + "/healthz")
            elapsed = time.perf_counter() - started
            latencies.append(elapsed * 1000)
            time.sleep(max(0.0, 0.1 - elapsed))
    out.put(latencies)


def burst(url: str, files: list[tuple[str, bytes]]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    poller = ctx.Process(target=poll_health, args=(url, stop, out))
    poller.start()
    time.sleep(0.5)  # a few quiet polls first
    refused: list[int] = []
    threads = [threading.Thread(target=upload, args=(url, name, data, refused)) for name, data in files]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    stop.set()
    latencies = out.get(timeout=60)
    poller.join(30)
    return {"wall_s": wall, "health_ms": latencies, "refused": len(refused)}


def run_case(side: dict, case: str, files: dict[str, bytes], mode: str, endpoint: str | None) -> dict:
    chosen = [(f"{i:02d}-{size}.png", files[size]) for i, size in enumerate(CASES[case])]
    warm = photo_png(800, 600)
    with Server(side["handler"], mode, endpoint, side["env"]) as server:
        upload(server.url, "warm.png", warm, [])
        base_kb = vm_rss_kb(server.proc.pid)
        started = time.perf_counter()
        for name, data in chosen:
            upload(server.url, "seq-" + name, data, [])
        sequential_s = time.perf_counter() - started
        seq_hwm = vm_hwm_kb(server.proc.pid)
    with Server(side["handler"], mode, endpoint, side["env"]) as server:
        upload(server.url, "warm.png", warm, [])
        result = burst(server.url, chosen)
        hwm = vm_hwm_kb(server.proc.pid)
    health = result["health_ms"]
    return {
        "side": side["name"],
        "case": case,
        "images": len(chosen),
        "health_p50": statistics.median(health),
        "health_p95": pct(health, 95),
        "health_max": max(health),
        "polls": len(health),
        "rate": len(chosen) / result["wall_s"],
        "seq_rate": len(chosen) / sequential_s,
        "refused": result["refused"],
        "peak_mb": hwm / 1024,
        "seq_peak_mb": seq_hwm / 1024,
        "base_mb": base_kb / 1024,
    }


PER_IMAGE = """
import sys, time
from image_pipeline import ImageProcessor
from image_pipeline.settings import DEFAULTS, parse_variants
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])
p = ImageProcessor(parse_variants(DEFAULTS['VARIANTS']))
p.process_image(open(sys.argv[2], 'rb').read())  # warm: plugins, codecs
base = status('VmRSS:')
p.process_image(open(sys.argv[1], 'rb').read())  # the file's bytes are held while it is decoded
print(base, status('VmHWM:'))
"""


def per_image_peak_mb(path: Path, warm: Path, handler_dir: str | None) -> float:
    """The processor's own peak for one image, its input bytes included: VmHWM − RSS before it,
    in a fresh process (after a warm-up image, so codecs and plugins are in the base)."""
    env = {**os.environ, **({"PYTHONPATH": handler_dir} if handler_dir else {})}
    out = subprocess.run(
        [PYTHON, "-c", PER_IMAGE, str(path), str(warm)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return (int(out[1]) - int(out[0])) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("storage", "s3"), default="storage")
    parser.add_argument("--before", help="another checkout's handler/ directory, run as the 'before' side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", default="mixed8,big10")
    parser.add_argument("--concurrency", type=int, help="PROCESS_CONCURRENCY for this checkout (default: CPUs)")
    parser.add_argument("--wait-ms", type=int, help="PROCESS_WAIT_MS for this checkout (default: its own)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "image-pipeline-bench-png")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    files = images(args.cache)
    env = {}
    if args.concurrency:
        env["PROCESS_CONCURRENCY"] = str(args.concurrency)
    if args.wait_ms is not None:
        env["PROCESS_WAIT_MS"] = str(args.wait_ms)
    sides = ([{"name": "before", "handler": args.before, "env": {}}] if args.before else []) + [
        {"name": "after", "handler": None, "env": env}
    ]
    cases = args.cases.split(",")
    print(f"load average before: {loadavg()} (cores: {os.cpu_count()})", file=sys.stderr)
    rows = []
    with MotoProcess() if args.mode == "s3" else _nothing() as endpoint:
        for round_ in range(args.rounds):
            for case in cases:
                for side in sides if round_ % 2 == 0 else sides[::-1]:
                    load = loadavg()
                    row = run_case(side, case, files, args.mode, endpoint)
                    row["round"], row["load_before"] = round_, load
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    print(f"load average after: {loadavg()}", file=sys.stderr)
    big = args.cache / "photo-{}x{}.png".format(*SIZES["60mp"])
    warm = args.cache / "photo-{}x{}.png".format(*SIZES["9mp"])
    peaks = {side["name"]: per_image_peak_mb(big, warm, side["handler"]) for side in sides}

    base = statistics.median(r["base_mb"] for r in rows)
    from image_pipeline.pool import cpu_count

    limit = args.concurrency or cpu_count()
    print(
        f"### `serve {'--storage DIR' if args.mode == 'storage' else '--endpoint-url (moto in its own process)'}`: "
        f"{args.rounds} round(s), median per side; load average at the cases' starts: "
        f"{', '.join(r['load_before'].split()[0] for r in rows)} on {os.cpu_count()} cores\n"
    )
    print(
        "| case | side | /healthz p50 ms | p95 ms | max ms | images/s in flight | one at a time | ratio "
        "| 503 (retried) | API peak RSS MB | bound MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        for side in sides:
            mine = [r for r in rows if r["case"] == case and r["side"] == side["name"]]
            med = {
                k: statistics.median(r[k] for r in mine)
                for k in ("health_p50", "health_p95", "health_max", "rate", "seq_rate", "refused", "peak_mb")
            }
            worst = max(r["health_max"] for r in mine)
            bound = (
                f"{limit} × {peaks[side['name']]:.0f} + {base:.0f} = {limit * peaks[side['name']] + base:.0f}"
                if side["name"] == "after"
                else "none"
            )
            print(
                f"| {case} ({len(CASES[case])} in flight) | {side['name']} | {med['health_p50']:.0f} "
                f"| {med['health_p95']:.0f} | {med['health_max']:.0f} (worst {worst:.0f}) | {med['rate']:.2f} "
                f"| {med['seq_rate']:.2f} | {med['rate'] / med['seq_rate']:.2f}× | {med['refused']:.0f} "
                f"| {med['peak_mb']:.0f} (max {max(r['peak_mb'] for r in mine):.0f}) | {bound} |"
            )
    print(
        "\nbound = PROCESS_CONCURRENCY × the processor's own peak for one 60 MP PNG, its input bytes included "
        "(fresh process: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items())
        + f") + the API's RSS after a warm-up upload ({base:.0f} MB)"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "per_image_peak_mb": peaks}, indent=1))
    return 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


if __name__ == "__main__":
    sys.exit(main())
