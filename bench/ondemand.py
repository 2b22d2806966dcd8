"""Sizes on demand: what a first request for a width URL costs, against a stored hit and against
libvips making the same output from the same bytes, in one run.

    python bench/ondemand.py [CORPUS] [--rounds 10] [--json OUT]

    pip install -r bench/requirements.txt   (pyvips + pyvips-binary, numpy: bench-only)

Inputs: a 12 MP (4000×3000) and a 24 MP (6000×4000) JPEG made from the corpus's largest photo
(LANCZOS, q90, like bench/mixed.py; fetch it with /work/shared/corpus/fetch or bench/fetch-corpus),
or a generated photo-like picture when there is no corpus.

Through `image-pipeline serve` (its embedded S3, `API_AUTH=open` as serve runs locally), per input
and round: one `POST /images` (not timed), then for each target (`w640.webp`, `w1080.avif`, in
alternating order) the first `GET /images/{id}/<target>` (made in the request: one LIST, a GET of
the manifest and of the upload, the image work, a conditional PUT, a HEAD of the manifest, then the
302) and a second one (a hit: one LIST, then the 302). Redirects are not followed.

Beside it, in one warmed process of its own, the same bytes through our processor alone (what the
request runs) and through libvips (`thumbnail_buffer` to the width, the ICC transform only where
the file embeds a profile, WebP effort 4 / AVIF effort 2 = our method 4 / speed 7, quality 85,
metadata stripped), interleaved; each engine warmed once. SSIM of our output against libvips'.
`--json OUT` also writes the figures (the raw times, the table's rows and the cost table) for
`bench/charts.py`.

Cost per million requests from the S3 request counts above (us-east-1: PUT/LIST $0.005 per 1,000,
GET/HEAD $0.0004 per 1,000) and Lambda arm64 ($0.0000133334 per GB-s, $0.20 per million requests)
at 1024 MB (0.58 vCPU), with the processing's CPU time measured here scaled by 1 / 0.58.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from concurrency import PYTHON, Server, vm_hwm_kb  # noqa: E402

from handler import gradients_and_shapes, loadavg, pct  # noqa: E402

SIZES = {"12 MP": (4000, 3000), "24 MP": (6000, 4000)}
TARGETS = {"w640.webp": (640, "webp"), "w1080.avif": (1080, "avif")}
S3_PUT, S3_GET = 5.0, 0.4  # $ per million requests
LAMBDA_GBS, LAMBDA_REQ, VCPU_1024 = 0.0000133334, 0.20, 0.58


def inputs(corpus: Path) -> dict[str, bytes]:
    from PIL import Image, ImageOps

    photos = sorted(corpus.glob("*.jpg"), key=lambda p: p.stat().st_size) if corpus.is_dir() else []
    made = {}
    for name, size in SIZES.items():
        if photos:
            with Image.open(photos[-1]) as im:
                picture = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), size, Image.Resampling.LANCZOS)
        else:
            picture = gradients_and_shapes(*size).convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        made[name] = buffer.getvalue()
    return made


# -- the engines, in a process of their own ----------------------------------------------------


def engines(paths: list[str], rounds: int) -> dict:
    """Our processor and libvips on every (input, target), interleaved; ms and bytes per run."""
    import pyvips

    from image_pipeline import ImageFormat, ImageProcessor, VariantConfig

    def ours(data: bytes, width: int, ext: str) -> bytes:
        spec = VariantConfig(f"w{width}", width, 0, format=ImageFormat.parse(ext))
        return ImageProcessor([spec]).process_image(data).variants[0].data

    def vips(data: bytes, width: int, ext: str) -> bytes:
        header = pyvips.Image.new_from_buffer(data, "")
        profile = {"export_profile": "srgb"} if header.get_typeof("icc-profile-data") else {}
        image = pyvips.Image.thumbnail_buffer(data, width, height=10_000_000, size="down", **profile)
        if ext == "webp":
            return image.webpsave_buffer(Q=85, effort=4, keep="none")
        return image.heifsave_buffer(Q=85, compression="av1", effort=2, keep="none")

    files = {p: Path(p).read_bytes() for p in paths}
    for data in files.values():  # warm each engine once
        for _width, ext in TARGETS.values():
            ours(data, 64, ext), vips(data, 64, ext)
    times: dict = {}
    cpu: dict = {}  # CPU time (all threads): what a Lambda below one vCPU waits for, steady on a shared machine
    outputs: dict = {}
    for r in range(rounds):
        for path, data in files.items():
            for target, (width, ext) in TARGETS.items():
                order = (("ours", ours), ("vips", vips)) if r % 2 == 0 else (("vips", vips), ("ours", ours))
                for name, engine in order:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    blob = engine(data, width, ext)
                    times.setdefault(f"{path}|{target}|{name}", []).append((time.perf_counter() - started) * 1000)
                    cpu.setdefault(f"{path}|{target}|{name}", []).append((time.process_time() - cpu_started) * 1000)
                    outputs[f"{path}|{target}|{name}"] = blob
    ssim = {}
    from PIL import Image
    from ssim import ssim as ssim_of  # bench/ssim.py: Gaussian SSIM on luminance

    def decoded(blob: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(blob))
        image.load()
        return image.convert("RGB")

    for path in files:
        for target in TARGETS:
            a, b = decoded(outputs[f"{path}|{target}|ours"]), decoded(outputs[f"{path}|{target}|vips"])
            if a.size != b.size:
                b = b.resize(a.size, Image.Resampling.LANCZOS)
            ssim[f"{path}|{target}"] = ssim_of(a, b)
    sizes = {k: len(v) for k, v in outputs.items()}
    return {"times": times, "cpu": cpu, "bytes": sizes, "ssim": ssim}


# -- through serve --------------------------------------------------------------------------------


def through_serve(files: dict[str, bytes], rounds: int) -> tuple[dict, int]:
    import httpx

    times: dict = {}
    with Server(None, "embedded", None, {"ONDEMAND_WIDTHS": "640,1080"}) as server, httpx.Client(timeout=120) as http:
        for r in range(rounds):
            for name, data in files.items():
                made = http.post(server.url + "/images", files={"file": (f"bench-{r}.jpg", data, "image/jpeg")})
                assert made.status_code == 201, made.text
                image_id = made.json()["id"]
                targets = list(TARGETS) if r % 2 == 0 else list(reversed(TARGETS))
                for target in targets:
                    for kind in ("first", "hit"):
                        started = time.perf_counter()
                        answer = http.get(f"{server.url}/images/{image_id}/{target}")
                        assert answer.status_code == 302, answer.text
                        times.setdefault(f"{name}|{target}|{kind}", []).append((time.perf_counter() - started) * 1000)
        peak = vm_hwm_kb(server.proc.pid)
    return times, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=".corpus", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = inputs(args.corpus)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "ondemand-bench"
    tmp.mkdir(exist_ok=True)
    paths = {}
    for name, data in files.items():
        path = tmp / f"{name.replace(' ', '')}.jpg"
        path.write_bytes(data)
        paths[name] = str(path)
    load_before = loadavg()
    print(f"load average before: {load_before}", file=sys.stderr)
    serve_times, peak_kb = through_serve(files, args.rounds)
    child = subprocess.run(
        [
            PYTHON,
            "-c",
            "import json,sys; sys.path.insert(0, sys.argv[1]); from ondemand import engines; "
            "print(json.dumps(engines(sys.argv[2:-1], int(sys.argv[-1]))))",
            str(HERE),
            *paths.values(),
            str(args.rounds),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    engine = json.loads(child.stdout.strip().splitlines()[-1])
    load_after = loadavg()
    print(f"load average after: {load_after}", file=sys.stderr)

    print(
        f"\nSizes on demand, {args.rounds} rounds, through `serve` (embedded S3), load {loadavg()}; "
        f"serve's peak RSS {peak_kb / 1024:.0f} MB\n"
    )
    print(
        "| input | output | first request p50 / p95 ms | hit p50 / p95 ms | our processing p50 ms | "
        "libvips p50 ms | **ours / libvips** | CPU ours / libvips p50 ms | bytes ours / libvips | SSIM vs libvips |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    table = []
    for name, path in paths.items():
        for target in TARGETS:
            first = serve_times[f"{name}|{target}|first"]
            hit = serve_times[f"{name}|{target}|hit"]
            ours = engine["times"][f"{path}|{target}|ours"]
            vips = engine["times"][f"{path}|{target}|vips"]
            ours_cpu = statistics.median(engine["cpu"][f"{path}|{target}|ours"])
            vips_cpu = statistics.median(engine["cpu"][f"{path}|{target}|vips"])
            ratio = statistics.median(ours) / statistics.median(vips)
            b_ours, b_vips = engine["bytes"][f"{path}|{target}|ours"], engine["bytes"][f"{path}|{target}|vips"]
            print(
                f"| {name} JPEG | {target} | {statistics.median(first):.0f} / {pct(first, 95):.0f} | "
                f"{statistics.median(hit):.1f} / {pct(hit, 95):.1f} | {statistics.median(ours):.0f} | "
                f"{statistics.median(vips):.0f} | **{ratio:.2f}×** | {ours_cpu:.0f} / {vips_cpu:.0f} "
                f"({ours_cpu / vips_cpu:.2f}×) | {b_ours / b_vips:.3f} | "
                f"{engine['ssim'][f'{path}|{target}']:.4f} |"
            )
            summary[f"{name}|{target}"] = {
                "first": first,
                "hit": hit,
                "ours": ours,
                "vips": vips,
                "ours_cpu": ours_cpu,
                "bytes": [b_ours, b_vips],
                "ssim": engine["ssim"][f"{path}|{target}"],
            }
            table.append(
                {
                    "input": f"{name} JPEG",
                    "output": target,
                    "first_p50_ms": round(statistics.median(first), 1),
                    "first_p95_ms": round(pct(first, 95), 1),
                    "hit_p50_ms": round(statistics.median(hit), 1),
                    "hit_p95_ms": round(pct(hit, 95), 1),
                    "ours_p50_ms": round(statistics.median(ours), 1),
                    "vips_p50_ms": round(statistics.median(vips), 1),
                    "ours_cpu_p50_ms": round(ours_cpu, 1),
                    "vips_cpu_p50_ms": round(vips_cpu, 1),
                    "ours_vs_vips": round(ratio, 3),
                    "bytes_ours_vs_vips": round(b_ours / b_vips, 3),
                    "ssim_vs_vips": round(engine["ssim"][f"{path}|{target}"], 4),
                }
            )
    # A Lambda at 1024 MB has 0.58 vCPU: the processing takes its CPU time ÷ 0.58 there (CPU time, not this
    # machine's wall clock, which other work on a shared machine stretches).
    processing = statistics.median([v["ours_cpu"] for v in summary.values()])
    s3_ms = statistics.median([statistics.median(v["first"]) - statistics.median(v["ours"]) for v in summary.values()])
    lambda_first = (processing / VCPU_1024 + max(s3_ms, 0)) / 1000 * 1.0 * LAMBDA_GBS * 1e6 + LAMBDA_REQ
    print("\n| per million requests | S3 requests | S3 $ | Lambda $ (1024 MB) | total $ |")
    print("|---|---|---:|---:|---:|")
    rows = [
        ("API, first request", "1 LIST + 1 PUT + 2 GET + 1 HEAD", 2 * S3_PUT + 3 * S3_GET, lambda_first),
        ("API, hit", "1 LIST", S3_PUT, None),
        ("CDN, first request (miss → function)", "1 PUT + 4 GET + 1 HEAD", S3_PUT + 5 * S3_GET, lambda_first),
        ("CDN, hit at the edge", "none", 0.0, 0.0),
        ("CDN, hit from the bucket (edge miss)", "1 GET", S3_GET, 0.0),
    ]
    cost = []
    for label, requests, s3, lam in rows:
        lam_text = "(the API function's request)" if lam is None else f"{lam:.2f}"
        total = s3 + (lam or 0.0)
        print(f"| {label} | {requests} | {s3:.2f} | {lam_text} | {total:.2f} |")
        cost.append(
            {
                "request": label,
                "s3_requests": requests,
                "s3_usd": round(s3, 2),
                "lambda_usd": None if lam is None else round(lam, 2),
                "total_usd": round(total, 2),
            }
        )
    print(
        f"\n(Lambda: {processing:.0f} ms of processing CPU time here ÷ {VCPU_1024} vCPU + {max(s3_ms, 0):.0f} ms of "
        "S3 and HTTP, measured as first request minus processing.)"
    )
    if args.json:
        figures = {
            "bench": "bench/ondemand.py",
            "argv": sys.argv[1:],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_before": load_before,
            "load_after": load_after,
            "cpus": os.cpu_count(),
            "rounds": args.rounds,
            "serve_peak_rss_mb": round(peak_kb / 1024),
            "rows": table,
            "cost_per_million": cost,
            "lambda_first_ms": {
                "processing": round(processing),
                "vcpu": VCPU_1024,
                "s3_and_http": round(max(s3_ms, 0)),
            },
            "serve": serve_times,
            "engines": engine,
            "peak_kb": peak_kb,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
