"""Backfill benchmark: `image-pipeline backfill`'s own code path over the real-photo corpus against
moto's S3 server, with 1 and 2 worker processes, and what 1 million images would cost as an S3
Batch Operations job at the template's memory size.

    bench/fetch-corpus .corpus && .venv/bin/python bench/backfill.py [--corpus .corpus] [--workers 1 2]
                                                                      [--copies 2] [--json OUT]

What runs: moto's server in a process of its own; per worker count a fresh bucket holding the
corpus (`--copies` times, under distinct keys), then `backfill.run` — exactly what the command
runs: paginated listing, `ImageService.state` per object in the workers, `ImageService.handle` for
the chosen ones, one S3 client per worker process, spawn start-up included — then a second pass
over the same bucket, where every image is current (what a rerun after an interruption costs).

Columns:
  images/s            processed images / wall time of the whole run (start-up included)
  CPU s/image (work)  worker CPU time inside ImageService.handle, per image (Result.cpu_s)
  CPU s/image (all)   CPU of every worker process, start-up and state checks included
                      (getrusage of the joined children) / images
  handle ms p50/p95   the service's wall time per image (Outcome.total_ms)
  rerun s             the second pass: listing + one manifest GET per object, nothing to do
                      (start-up of the worker processes included)

Projection for 1,000,000 images as a Batch Operations job (one Lambda invocation per image):
  Lambda duration at M MB ≈ CPU s/image (work) ÷ (M / 1769 vCPU) + S3 waits (--s3-wait-ms: the
                             warm-path S3 overhead measured by bench/handler.py, 37 ms p50 for
                             12 MP; the wall time here is not used, as other load on a shared
                             machine inflates it while CPU time stays close to the work done)
  Lambda $   = duration × M/1024 GB × $0.0000133334 per GB-s × 1e6 + $0.20 per million requests
  S3 $       = 5 PUT-class ($0.005/1000) + 4 GET-class ($0.0004/1000) per image (docs/performance.md)
  Batch Ops  = $0.25 per job + $1.00 per million objects
  deciding   = the command's own listing (1 LIST per 1000 keys) + 1 manifest GET per object
  time       = 1e6 × duration ÷ concurrent executions
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from handler import MotoProcess, loadavg, pct  # noqa: E402  (bench/handler.py)

EXTS = {".jpg", ".jpeg", ".png", ".webp"}
FULL_VCPU_MB = 1769
GB_S_ARM64 = 0.0000133334
PER_REQUEST = 0.20 / 1e6
PUT_PRICE = 0.005 / 1000
GET_PRICE = 0.0004 / 1000
LIST_PRICE = 0.005 / 1000
PUTS, GETS = 5, 4  # per processed image: 3 variants + manifest + tagging PUT; manifest, raw, HEAD, tagging GET
BATCH_JOB, BATCH_PER_OBJECT = 0.25, 1.00 / 1e6
MILLION = 1_000_000


def template_memory_mb() -> int:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)
    return int(template["Parameters"]["MemorySize"]["Default"])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(endpoint: str, files: list[Path], copies: int, workers: int) -> dict:
    import boto3

    from image_pipeline import backfill

    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"bench-backfill-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    bytes_in = 0
    for copy in range(copies):
        for path in files:
            data = path.read_bytes()
            bytes_in += len(data)
            s3.put_object(Bucket=bucket, Key=f"raw/corpus/{copy}/{path.name}", Body=data)
    target = backfill.Target(bucket, "raw/")
    results: list = []

    def pass_(process: bool) -> tuple[backfill.Summary, float, float]:
        summary = backfill.Summary(target.url, "stale", workers)
        cpu_before, started = children_cpu(), time.perf_counter()
        backfill.run(
            backfill.list_objects(s3, target),
            chosen=backfill.MODES["stale"],
            process=process,
            workers=workers,
            summary=summary,
            stop=threading.Event(),
            on_result=results.append,
        )
        return summary, time.perf_counter() - started, children_cpu() - cpu_before

    first, wall, cpu_all = pass_(True)
    processed = [r for r in results if r.status == "processed"]
    results.clear()
    rerun, rerun_wall, _ = pass_(True)
    assert rerun.processed == 0, "the second pass found work left"
    return {
        "workers": workers,
        "images": first.processed,
        "failed": first.failures,
        "bytes_in": bytes_in,
        "bytes_out": first.bytes_out,
        "wall_s": wall,
        "images_per_s": first.processed / wall,
        "cpu_work_per_image": first.cpu_s / max(first.processed, 1),
        "cpu_all_per_image": cpu_all / max(first.processed, 1),
        "handle_ms_p50": statistics.median(r.total_ms for r in processed),
        "handle_ms_p95": pct([r.total_ms for r in processed], 95),
        "rerun_s": rerun_wall,
        "rerun_current": rerun.states["current"],
    }


def projection(run: dict, memory_mb: int, wait_s: float) -> dict:
    vcpu = memory_mb / FULL_VCPU_MB
    duration = run["cpu_work_per_image"] / min(vcpu, 1.0) + wait_s
    lambda_cost = duration * memory_mb / 1024 * GB_S_ARM64 * MILLION + PER_REQUEST * MILLION
    s3_cost = (PUTS * PUT_PRICE + GETS * GET_PRICE) * MILLION
    decide_cost = (MILLION / 1000) * LIST_PRICE + MILLION * GET_PRICE + PUT_PRICE  # + the CSV's PUT
    batch_cost = BATCH_JOB + BATCH_PER_OBJECT * MILLION
    return {
        "memory_mb": memory_mb,
        "vcpu": vcpu,
        "duration_s": duration,
        "lambda": lambda_cost,
        "s3": s3_cost,
        "decide": decide_cost,
        "batch": batch_cost,
        "total": lambda_cost + s3_cost + decide_cost + batch_cost,
        "hours_at": {c: MILLION * duration / c / 3600 for c in (100, 1000)},
        "local_hours": MILLION / run["images_per_s"] / 3600,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / ".corpus")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, default=1, help="upload the corpus this many times (distinct keys)")
    parser.add_argument(
        "--s3-wait-ms", type=float, default=37.0, help="S3 waits per image on Lambda (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    files = sorted(p for p in args.corpus.iterdir() if p.suffix.lower() in EXTS) if args.corpus.is_dir() else []
    if not files:
        print(f"no images in {args.corpus}: run bench/fetch-corpus {args.corpus}", file=sys.stderr)
        return 2
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_ENDPOINT_URL", None)
    memory_mb = template_memory_mb()
    print(f"load average before: {loadavg()} (cores: {os.cpu_count()})", file=sys.stderr)
    runs = []
    with MotoProcess() as endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint  # the workers build their runtime from the environment
        for workers in args.workers:
            runs.append(one_run(endpoint, files, args.copies, workers))
            print(f"  {workers} worker(s) done", file=sys.stderr)
    print(f"load average after: {loadavg()}", file=sys.stderr)

    images = runs[0]["images"]
    print(
        f"\n### Local backfill: {images} corpus photos ({len(files)} files × {args.copies}, "
        f"{runs[0]['bytes_in'] / 1e6:.1f} MB), moto server in its own process, {os.cpu_count()} shared cores\n"
    )
    print(
        "| workers | images | failed | wall s | images/s | CPU s/image (work) | CPU s/image (all) "
        "| handle ms p50 / p95 | MB out | rerun s (all current) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['workers']} | {r['images']} | {r['failed']} | {r['wall_s']:.1f} | {r['images_per_s']:.2f} "
            f"| {r['cpu_work_per_image']:.3f} | {r['cpu_all_per_image']:.3f} "
            f"| {r['handle_ms_p50']:.0f} / {r['handle_ms_p95']:.0f} | {r['bytes_out'] / 1e6:.1f} "
            f"| {r['rerun_s']:.1f} |"
        )
    if len(runs) > 1:
        scaling = runs[-1]["images_per_s"] / runs[0]["images_per_s"]
        print(f"\nscaling 1 → {runs[-1]['workers']} workers: {scaling:.2f}×")

    wait_s = args.s3_wait_ms / 1000
    p = projection(runs[0], memory_mb, wait_s)
    print(f"\n### 1,000,000 such images as an S3 Batch Operations job ({memory_mb} MB = {p['vcpu']:.2f} vCPU, arm64)\n")
    print("| | per million images |")
    print("|---|---:|")
    print(
        f"| Lambda duration per image (projected: {runs[0]['cpu_work_per_image']:.3f} CPU s "
        f"÷ {min(p['vcpu'], 1):.2f} "
        f"vCPU + {args.s3_wait_ms:.0f} ms S3 waits) "
        f"| {p['duration_s'] * 1000:.0f} ms |"
    )
    print(f"| Lambda compute + requests | ${p['lambda']:.2f} |")
    print(f"| S3 requests of the pipeline ({PUTS} PUT-class + {GETS} GET-class per image) | ${p['s3']:.2f} |")
    print(f"| S3 Batch Operations ($0.25 per job + $1.00 per million objects) | ${p['batch']:.2f} |")
    print(f"| deciding which objects (1,000 LISTs + 1 manifest GET per object) + the CSV | ${p['decide']:.2f} |")
    print(f"| **total** | **${p['total']:.2f}** |")
    print(
        f"| time at 100 / 1,000 concurrent executions | {p['hours_at'][100]:.1f} h "
        f"/ {p['hours_at'][1000] * 60:.0f} min |"
    )
    print(f"| the same locally with {runs[0]['workers']} worker(s) here | {p['local_hours']:.0f} h |")
    if len(runs) > 1:
        print(
            f"| the same locally with {runs[-1]['workers']} workers here | "
            f"{projection(runs[-1], memory_mb, wait_s)['local_hours']:.0f} h |"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "projection": p, "memory_mb": memory_mb}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
