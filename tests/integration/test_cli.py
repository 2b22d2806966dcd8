"""`image-pipeline invoke`: the README's local run, in a fresh process with its own embedded S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import decode
from tests.reliability import conftest as reliability

proxy = reliability.proxy  # the fault-injecting proxy fixture, shared with tests/reliability

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    return subprocess.run(
        [sys.executable, "-m", "image_pipeline.cli", "invoke", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_closed_cleanly(stderr: str) -> None:
    """A process that ends closes its S3 sessions: aiohttp says nothing at exit."""
    assert "Unclosed" not in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.parametrize(
    "event,prefix",
    [
        ("s3-put.json", "photos/2026/holiday"),
        ("s3-put-encoded-key.json", "photos/summer holiday/café + friends"),
        ("eventbridge-object-created.json", "photos/2026/eventbridge"),
        ("sqs-s3.json", "photos/2026/queued"),
        ("s3-batch-operation.json", "photos/2025/backfill"),
        ("s3-batch-operation-v2.json", "photos/2025/old scan + notes"),
    ],
)
def test_invoke_runs_the_handler_on_an_embedded_s3_and_copies_the_variants(tmp_path, event, prefix):
    done = invoke(f"events/{event}", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert_closed_cleanly(done.stderr)
    assert "raw object tags: image-pipeline-status=processed" in done.stdout
    assert f"processed/{prefix}/thumbnail.webp" in done.stdout
    out = tmp_path / prefix
    assert sorted(p.name for p in out.iterdir()) == ["large.jpg", "manifest.json", "medium.webp", "thumbnail.webp"]
    assert decode((out / "thumbnail.webp").read_bytes()).size == (150, 150)
    assert decode((out / "large.jpg").read_bytes()).size == (1600, 1067)  # the sample is 1600 px: not upscaled


def test_invoke_with_a_bad_image_reports_the_error_tag(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is a text file")
    done = invoke("events/s3-put.json", "--image", str(bad))
    assert done.returncode == 0, done.stderr
    assert "image-pipeline-status=failed, image-pipeline-error=unsupported_type" in done.stdout
    assert "(nothing written)" in done.stdout
    assert_closed_cleanly(done.stderr)


def test_an_invoke_the_handler_fails_for_a_retry_exits_1_and_closes_its_sessions(proxy):
    """S3 answers every variant PUT with 503 SlowDown: the handler raises for Lambda to retry; the
    local run says so in one line, exits 1, and its S3 client is closed on the way out."""
    from tests.reliability.faultproxy import Fault

    proxy.add(Fault.slow_down(), method="PUT", path="/processed/", times=None)
    done = invoke("events/s3-put.json", "--endpoint-url", proxy.url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "image-pipeline: the handler raised for a retry: 1 object(s) must be retried" in done.stderr
    assert proxy.injected("slow_down") >= 3
    assert_closed_cleanly(done.stderr)


def test_an_unreachable_endpoint_is_one_clear_message(unused_port):
    done = invoke("events/s3-put.json", "--endpoint-url", f"http://127.0.0.1:{unused_port}")
    assert done.returncode == 2
    assert f'image-pipeline: Could not connect to the endpoint URL: "http://127.0.0.1:{unused_port}/' in done.stderr
    assert_closed_cleanly(done.stderr)


def test_a_process_that_ends_without_closing_the_runtime_closes_its_sessions(s3, bucket, moto_server):
    """A script, a bench or a test that runs the handler and just exits (on success or on an
    exception): the runtime's exit hook closes the S3 client; aiohttp has nothing to complain about."""
    s3.put_object(Bucket=bucket, Key="raw/exit/a.jpg", Body=(ROOT / "events" / "sample.jpg").read_bytes())
    code = (
        "import sys, image_pipeline.handler as h\n"
        "from image_pipeline.service import ObjectRef\n"
        f"print(h.runtime.handle(ObjectRef({bucket!r}, 'raw/exit/a.jpg')).status)\n"
        "if sys.argv[1] == 'raise': raise SystemExit('stopped on purpose')\n"
    )
    for how in ("return", "raise"):
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": moto_server}
        done = subprocess.run(
            [sys.executable, "-c", code, how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.stdout.split()[0] in ("processed", "skipped"), done.stderr
        assert "Unclosed" not in done.stderr, done.stderr


@pytest.mark.parametrize("event", ["s3-delete.json", "eventbridge-object-deleted.json"])
def test_invoke_with_a_removal_event_processes_deletes_and_removes_the_outputs(event):
    done = invoke(f"events/{event}")
    assert done.returncode == 0, done.stderr
    assert "processed, then deleted: s3://image-pipeline-example/raw/photos/2026/" in done.stdout
    assert '"status": "removed"' in done.stdout
    assert "(nothing written)" in done.stdout and "raw object: deleted" in done.stdout


def test_a_bad_setting_is_one_clear_message_not_a_traceback():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env.update(RAW_DISPOSITION="move", VARIANTS="thumb:150x150:top-left")
    done = subprocess.run(
        [sys.executable, "-m", "image_pipeline.cli", "invoke", "events/s3-put.json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "RAW_DISPOSITION='move' must be one of tag, delete" in done.stderr
    assert "gravity (centre, north," in done.stderr


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there
