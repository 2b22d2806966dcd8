"""`image-pipeline invoke`: the README's local run, in a fresh process with its own embedded S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import decode

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    return subprocess.run(
        [sys.executable, "-m", "image_pipeline.cli", "invoke", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


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
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "RAW_DISPOSITION='move' must be one of tag, delete" in done.stderr
    assert "gravity (centre, north," in done.stderr
