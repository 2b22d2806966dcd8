"""A thousand uploads through the real handler, then a reconciliation: every valid upload has a
complete manifest, every bad one is tagged with its code, nothing is unaccounted for, and a
warm container neither grows in memory nor leaks threads, sockets or event loops.

Shape: 1,000 objects (86 % small valid images of 64-256 px in four formats, 14 % bad inputs)
sent as 100 SQS batches of 10 to two simulated Lambda containers: two processes
(tests/reliability/container.py), each importing the real handler once (a cold start) and then
invoking it on its 50 batches one after the other. That is what Lambda does: one invocation at
a time per container, containers side by side, and a leak accumulates inside one container's
life. Processes instead of threads because the handler keeps one runtime per process (as Lambda
does), and so each container's RSS is its own. S3 is a moto server in a third process.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.reliability.generated_inputs import HTML, PDF, SVG, TEXT, png_bomb, raw_png, truncated
from tests.reliability.support import ERROR, STATUS, Uploaded, sqs_event

RECORDS, BATCH, BAD_EVERY = 1000, 10, 7  # every 7th upload is bad: 142 bad, 858 valid
CONTAINERS = 2  # concurrent "Lambda containers" (processes), each invoked sequentially
ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def valid_image(i: int) -> tuple[bytes, str]:
    """One of 64 distinct small images (4 formats, 64-256 px, every aspect); cheap to repeat."""
    i %= 64
    fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")][i % 4]
    width, height = 64 + (i * 37) % 193, 64 + (i * 53) % 193  # 64..256 px, every aspect
    bands = [Image.linear_gradient("L").resize((width, height)).rotate(90 * (i % 4 + c)) for c in range(3)]
    image = Image.merge("RGB", bands)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), ext


BAD = [
    (b"", "empty_file"),
    (TEXT, "unsupported_type"),
    (HTML, "unsupported_type"),
    (SVG, "unsupported_type"),
    (PDF, "unsupported_type"),
    (png_bomb(), "too_many_pixels"),
    (raw_png(32, 32, ihdr_crc=1), "corrupt_image"),
    (raw_png(0, 16), "corrupt_image"),
]


@pytest.fixture(scope="module")
def s3_process():
    """A moto server in a process of its own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.load
def test_a_thousand_records_all_accounted_for_with_bounded_memory(s3_process, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_process)
    bucket = f"load-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)

    expected: dict[str, str] = {}  # raw key -> "processed" or the error code
    bodies: dict[str, bytes] = {}
    for i in range(RECORDS):
        if i % BAD_EVERY == BAD_EVERY - 1:
            data, code = BAD[(i // BAD_EVERY) % len(BAD)]
            if code == "corrupt_image" and i % 2:
                data = truncated(valid_image(i)[0])  # a truncated real image now and then
            key, expected_outcome = f"raw/load/{i:04d}-bad.jpg", code
        else:
            data, ext = valid_image(i)
            key, expected_outcome = f"raw/load/{i:04d}.{ext}", "processed"
        expected[key], bodies[key] = expected_outcome, data

    def put(key: str) -> Uploaded:
        etag = s3.put_object(Bucket=bucket, Key=key, Body=bodies[key])["ETag"].strip('"')
        return Uploaded(key, etag, len(bodies[key]))

    clock = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        uploads = list(pool.map(put, expected))
    upload_s, clock = time.perf_counter() - clock, time.perf_counter()

    batches = [sqs_event(bucket, uploads[i : i + BATCH], first_id=i) for i in range(0, RECORDS, BATCH)]
    reports = run_containers(batches, s3_process, tmp_path)
    elapsed = max(r["seconds"] for r in reports)
    failures = [f for r in reports for response in r["responses"] for f in response["batchItemFailures"]]
    clock = time.perf_counter()

    # -- reconcile -----------------------------------------------------------------------------
    listing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="processed/"):
        listing.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    manifest_keys = [k for k in listing if k.endswith("/manifest.json")]

    def read_manifest(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def read_tags(key: str) -> dict:
        return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}

    with ThreadPoolExecutor(8) as pool:
        manifests = list(pool.map(read_manifest, manifest_keys))
        raw_tags = dict(zip(expected, pool.map(read_tags, expected), strict=True))

    reconcile_s = time.perf_counter() - clock
    valid = {k for k, v in expected.items() if v == "processed"}
    bad = {k: v for k, v in expected.items() if v != "processed"}
    by_source = {m["source"]["key"]: m for m in manifests}
    listed = {v["key"] for m in manifests for v in m["variants"]} | set(manifest_keys)
    tagged_processed = {k for k, t in raw_tags.items() if t == {STATUS: "processed"}}
    tagged_failed = {k: t[ERROR] for k, t in raw_tags.items() if t.get(STATUS) == "failed"}
    unaccounted = set(expected) - tagged_processed - set(tagged_failed)

    report = {
        "records": RECORDS,
        "valid": len(valid),
        "bad": len(bad),
        "manifests": len(manifests),
        "failed_tags": len(tagged_failed),
        "unaccounted": len(unaccounted),
        "batch_item_failures": len(failures),
        "seconds": round(elapsed, 1),
        "records_per_s": round(RECORDS / elapsed, 1),
        "upload_s": round(upload_s, 1),
        "reconcile_s": round(reconcile_s, 1),
        "containers": [
            {
                "invocations": len(r["responses"]),
                "rss_mb_first_mid_last": [r["rss_mb"][0], r["rss_mb"][len(r["rss_mb"]) // 2], r["rss_mb"][-1]],
                "first": r["first"],
                "last": r["last"],
                "closed": r["closed"],
            }
            for r in reports
        ],
    }
    print("LOAD", json.dumps(report))

    assert failures == []
    assert set(by_source) == valid and len(manifests) == len(valid)  # one manifest per valid upload
    assert all(by_source[k]["source"]["etag"] == u.etag for u in uploads if (k := u.key) in valid)
    assert all(listing[v["key"]] == v["bytes"] for m in manifests for v in m["variants"])  # complete
    assert set(listing) == listed  # no stray output: everything under processed/ is in a manifest
    assert tagged_failed == bad  # every bad upload tagged, with its code
    assert tagged_processed == valid
    assert unaccounted == set()

    # -- each warm container stays the same size ------------------------------------------------
    for r in reports:
        half = r["rss_mb"][len(r["rss_mb"]) // 2 :]
        growth = half[-1] - half[0]
        assert growth < 6, f"RSS grew {growth:.1f} MB over the second half ({half[0]} -> {half[-1]} MB)"
        first, last, closed = r["first"], r["last"], r["closed"]
        assert last["threads"] <= first["threads"] and last["loops"] == first["loops"] == 1, (first, last)
        assert last["fds"] <= first["fds"] + 4, (first, last)  # keep-alive sockets in the pool may vary a little
        assert closed["fds"] < last["fds"] and closed["loops"] == 0, (last, closed)  # and close() releases them


def run_containers(batches: list[dict], endpoint: str, tmp_path: Path) -> list[dict]:
    """Batches dealt round-robin to CONTAINERS processes, each running the real handler on its
    share one invocation at a time; returns each container's report (see container.py)."""
    procs = []
    for c in range(CONTAINERS):
        events = tmp_path / f"container-{c}.json"
        events.write_text(json.dumps(batches[c::CONTAINERS]))
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint, "PYTHONPATH": str(ROOT)}
        procs.append(
            (
                time.perf_counter(),
                subprocess.Popen(
                    [sys.executable, "-m", "tests.reliability.container", str(events)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    reports = []
    for started, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        report["seconds"] = time.perf_counter() - started
        reports.append(report)
    return reports
