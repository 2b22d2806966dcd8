"""`image-pipeline backfill` against moto's server, run as a user runs it: a separate process with
its own worker processes, reaching the session's S3 by endpoint URL.

What is asserted is what the user sees: which objects got new outputs (manifest ETags before and
after), the summary's counts, the exit status, the failed-keys file, the Batch Operations manifest
in the bucket and the job request; plus the handler answering the job's schema 2.0 tasks."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from image_pipeline import backfill
from tests.conftest import EVENTS
from tests.images import photo

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VARIANTS = "thumbnail:150x150:cover:webp;medium:800x800:webp;large:1920x1920:jpeg"
NEW_VARIANTS = DEFAULT_VARIANTS + ";small:320x320:webp"


def command(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "image_pipeline.cli", "backfill", *args]


def run_backfill(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args, "--failed-keys", str(tmp_path / "failed.csv")),
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def summary(stdout: str) -> dict[str, str]:
    """The summary table's rows, `name  value`, as a dict."""
    rows = {}
    for line in stdout.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) == 2:
            rows[parts[0]] = parts[1]
    return rows


def manifest_etags(s3, bucket: str, prefix: str = "processed/") -> dict[str, str]:
    """Raw key → its manifest's ETag (a new ETag means the image was processed again)."""
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        if item["Key"].endswith("/manifest.json"):
            body = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            found[body["source"]["key"]] = item["ETag"]
    return found


def variant_names(s3, bucket: str, raw_key: str) -> list[str]:
    prefix = "processed/" + raw_key.removeprefix("raw/").rsplit(".", 1)[0] + "/manifest.json"
    body = json.loads(s3.get_object(Bucket=bucket, Key=prefix)["Body"].read())
    return sorted(v["name"] for v in body["variants"])


def test_only_missing_and_stale_pick_exactly_the_right_objects_after_a_variants_change(
    s3, bucket, handler, context, settings_env, tmp_path
):
    from tests.conftest import load_event

    old = ["raw/lib/a.jpg", "raw/lib/b.png"]
    for key in old:
        s3.put_object(Bucket=bucket, Key=key, Body=photo(640, 480, "PNG" if key.endswith("png") else "JPEG"))
    first = run_backfill(tmp_path, f"s3://{bucket}/raw/", "--workers", "2")  # the old configuration
    assert first.returncode == 0, first.stderr
    assert summary(first.stdout)["processed"] == "2"

    settings_env(VARIANTS=NEW_VARIANTS)  # an upload after the change: the event path, new configuration
    s3.put_object(Bucket=bucket, Key="raw/lib/c.jpg", Body=photo(640, 480))
    handler.lambda_handler(load_event("s3-put.json", bucket=bucket, keys=["raw/lib/c.jpg"]), context)
    s3.put_object(Bucket=bucket, Key="raw/lib/d.jpg", Body=photo(640, 480))  # never processed
    s3.put_object(Bucket=bucket, Key="raw/other/e.jpg", Body=photo(64, 64))  # outside the prefix asked for
    before = manifest_etags(s3, bucket)
    assert sorted(before) == ["raw/lib/a.jpg", "raw/lib/b.png", "raw/lib/c.jpg"]

    dry = run_backfill(tmp_path, f"s3://{bucket}/raw/lib/", "--dry-run", VARIANTS=NEW_VARIANTS)
    assert dry.returncode == 0, dry.stderr
    rows = summary(dry.stdout)
    assert (rows["objects listed"], rows["missing"], rows["stale"], rows["current"]) == ("4", "1", "2", "1")
    assert "would process 3 object(s) (missing, stale)" in dry.stdout
    assert "  raw/lib/d.jpg" in dry.stdout.split("missing (first 1 of 1):")[1]
    assert manifest_etags(s3, bucket) == before  # a dry run changes nothing

    missing = run_backfill(tmp_path, f"s3://{bucket}/raw/lib/", "--only-missing", VARIANTS=NEW_VARIANTS)
    assert missing.returncode == 0, missing.stderr
    rows = summary(missing.stdout)
    assert (rows["processed"], rows["skipped"], rows["failed"]) == ("1", "3 (2 stale, 1 current)", "0")
    after = manifest_etags(s3, bucket)
    assert {k for k in after if after[k] != before.get(k)} == {"raw/lib/d.jpg"}
    assert variant_names(s3, bucket, "raw/lib/d.jpg") == ["large", "medium", "small", "thumbnail"]
    assert variant_names(s3, bucket, "raw/lib/a.jpg") == ["large", "medium", "thumbnail"]  # still stale

    stale = run_backfill(tmp_path, f"s3://{bucket}/raw/lib/", "--stale", VARIANTS=NEW_VARIANTS)
    assert stale.returncode == 0, stale.stderr
    rows = summary(stale.stdout)
    assert (rows["stale"], rows["current"], rows["processed"], rows["skipped"]) == ("2", "2", "2", "2 (2 current)")
    final = manifest_etags(s3, bucket)
    assert {k for k in final if final[k] != after.get(k)} == {"raw/lib/a.jpg", "raw/lib/b.png"}
    for key in ("raw/lib/a.jpg", "raw/lib/b.png"):
        assert variant_names(s3, bucket, key) == ["large", "medium", "small", "thumbnail"]
    assert "raw/other/e.jpg" not in final

    again = run_backfill(tmp_path, f"s3://{bucket}/raw/lib/", VARIANTS=NEW_VARIANTS)  # nothing left to do
    assert (summary(again.stdout)["processed"], summary(again.stdout)["current"]) == ("0", "4")
    assert manifest_etags(s3, bucket) == final

    everything = run_backfill(tmp_path, f"s3://{bucket}/raw/lib/", "--all", VARIANTS=NEW_VARIANTS)
    assert everything.returncode == 0, everything.stderr
    assert summary(everything.stdout)["processed"] == "4"  # current images are processed again too
    redone = manifest_etags(s3, bucket)
    assert all(redone[k] != final[k] for k in final)


@pytest.mark.parametrize(
    "signum,group,status",
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c-to-the-process-group", "sigterm-to-the-command"],
)
def test_an_interrupted_run_resumes_and_every_image_is_processed_exactly_once(
    s3, bucket, tmp_path, signum, group, status
):
    keys = [f"raw/many/{i:02d}.jpg" for i in range(24)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=photo(900, 600))
    proc = subprocess.Popen(
        command(f"s3://{bucket}/raw/many/", "--workers", "2", "--failed-keys", str(tmp_path / "failed.csv")),
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal: Ctrl-C reaches every worker
    )
    try:
        deadline = time.monotonic() + 180
        while len(manifest_etags(s3, bucket)) < 3:  # mid-run: some images done, most not
            assert proc.poll() is None and time.monotonic() < deadline, "backfill ended before it was interrupted"
            time.sleep(0.05)
        if group:
            os.killpg(proc.pid, signum)  # what Ctrl-C does: every process of the group gets it
        else:
            os.kill(proc.pid, signum)  # a service manager stopping the command
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == status, stderr
    assert "run the same command again to resume" in stderr
    done = manifest_etags(s3, bucket)
    rows = summary(stdout)
    assert 3 <= len(done) < len(keys)
    assert rows["processed"] == str(len(done))  # each image it counts is complete: its manifest exists
    for key in done:
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags == {"image-pipeline-status": "processed"}
    for key in set(keys) - set(done):  # not started, or stopped before its manifest: untouched raw object
        assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == []

    resumed = run_backfill(tmp_path, f"s3://{bucket}/raw/many/", "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    rows = summary(resumed.stdout)
    assert (rows["processed"], rows["skipped"]) == (str(len(keys) - len(done)), f"{len(done)} ({len(done)} current)")
    final = manifest_etags(s3, bucket)
    assert sorted(final) == keys
    assert {k: final[k] for k in done} == done  # the first run's images were not processed again


def test_failures_are_counted_listed_in_the_file_and_make_the_exit_status_non_zero(s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="raw/mixed/good.jpg", Body=photo(400, 300))
    s3.put_object(Bucket=bucket, Key="raw/mixed/notes.jpg", Body=b"these are not pixels")
    s3.put_object(Bucket=bucket, Key="raw/mixed/cut, short.jpg", Body=photo(400, 300)[:300])
    s3.put_object(Bucket=bucket, Key="raw/mixed/empty.png", Body=b"")
    done = run_backfill(tmp_path, f"s3://{bucket}/raw/mixed/", "--workers", "1")
    assert done.returncode == 1
    rows = summary(done.stdout)
    assert (rows["processed"], rows["failed"], rows["retried"]) == ("1", "3", "0")
    assert (rows["corrupt_image"], rows["unsupported_type"], rows["empty_file"]) == ("1", "1", "1")
    assert f"3 failed; keys and error codes written to {tmp_path / 'failed.csv'}" in done.stderr
    assert "Unclosed" not in done.stderr and "Traceback" not in done.stderr  # the worker closed its S3 client
    with (tmp_path / "failed.csv").open(newline="") as fh:
        listed = {row["key"]: row["error_code"] for row in csv.DictReader(fh)}
    assert listed == {
        "raw/mixed/notes.jpg": "unsupported_type",
        "raw/mixed/cut, short.jpg": "corrupt_image",
        "raw/mixed/empty.png": "empty_file",
    }
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key="raw/mixed/notes.jpg")["TagSet"]}
    assert tags == {"image-pipeline-status": "failed", "image-pipeline-error": "unsupported_type"}


def test_transient_failures_are_retried_and_counted_and_a_lasting_one_is_listed(s3, bucket, moto_server, tmp_path):
    from tests.reliability.faultproxy import Fault, FaultProxy

    s3.put_object(Bucket=bucket, Key="raw/flaky/a.jpg", Body=photo(400, 300))
    s3.put_object(Bucket=bucket, Key="raw/flaky/b.jpg", Body=photo(400, 300))
    proxy = FaultProxy(upstream=moto_server).start()
    try:
        # S3_MAX_ATTEMPTS=2 (tests/conftest.py): two 503s exhaust botocore's retries for one pass.
        proxy.add(Fault.slow_down(), method="PUT", path=r"/processed/flaky/a/manifest\.json", times=2)
        proxy.add(Fault.slow_down(), method="GET", path=r"/raw/flaky/b\.jpg$", times=None)
        done = run_backfill(tmp_path, f"s3://{bucket}/raw/flaky/", "--workers", "1", "--endpoint-url", proxy.url)
    finally:
        proxy.stop()
    assert done.returncode == 1, done.stderr
    rows = summary(done.stdout)
    # a: one more pass after its failed one; b: two more, then reported
    assert (rows["processed"], rows["failed"], rows["storage_error"], rows["retried"]) == ("1", "1", "1", "3")
    assert proxy.injected("slow_down") == 2 + 3 * 2
    with (tmp_path / "failed.csv").open(newline="") as fh:
        assert [(r["key"], r["error_code"]) for r in csv.DictReader(fh)] == [("raw/flaky/b.jpg", "storage_error")]
    assert sorted(manifest_etags(s3, bucket)) == ["raw/flaky/a.jpg"]
    assert s3.get_object_tagging(Bucket=bucket, Key="raw/flaky/b.jpg")["TagSet"] == []  # left as it was


def test_a_target_outside_the_raw_prefix_is_refused_before_anything_is_read(bucket, tmp_path):
    done = run_backfill(tmp_path, f"s3://{bucket}/processed/")
    assert done.returncode == 2
    assert "outside RAW_PREFIX='raw/'" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- S3 Batch Operations

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:image-pipeline-ImagePipelineFunction-abc"
ROLE = "arn:aws:iam::123456789012:role/image-pipeline-batch-operations"
BATCH_KEYS = ["raw/bo/plain.jpg", "raw/bo/summer holiday/café + friends.jpg", "raw/bo/a,b 100%.png"]


def _batch_job(s3, bucket: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    for key in BATCH_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=photo(300, 200, "PNG" if key.endswith("png") else "JPEG"))
    s3.put_object(Bucket=bucket, Key="raw/bo/done.jpg", Body=photo(300, 200))
    run_backfill(tmp_path, f"s3://{bucket}/raw/bo/done.jpg")  # current: must not be in the job
    done = run_backfill(
        tmp_path,
        f"s3://{bucket}/raw/bo/",
        "--batch-operations",
        "--print-only",
        "--function",
        FUNCTION,
        "--role-arn",
        ROLE,
        "--account-id",
        "123456789012",
        "--region",
        "eu-west-1",
    )
    assert done.returncode == 0, done.stderr
    (manifest_key,) = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="batch-operations/manifests/")["Contents"]
    ]
    lines = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read().decode().splitlines()
    return done, lines


def test_batch_operations_writes_the_csv_manifest_of_the_chosen_keys_url_encoded(s3, bucket, tmp_path):
    done, lines = _batch_job(s3, bucket, tmp_path)
    assert sorted(lines) == sorted(
        [
            f"{bucket},raw/bo/plain.jpg",
            f"{bucket},raw/bo/summer%20holiday/caf%C3%A9%20%2B%20friends.jpg",
            f"{bucket},raw/bo/a%2Cb%20100%25.png",
        ]
    )
    assert summary(done.stdout)["chosen"] == "3" and summary(done.stdout)["current"] == "1"
    for key in BATCH_KEYS:  # chosen, not processed: the job does that
        assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == []


def test_batch_operations_job_request_is_a_valid_create_job_call(s3, bucket, tmp_path):
    """moto's server has no S3 Control CreateJob, so the exact request is asserted without sending
    it, and checked against botocore's own model of the API (what boto3 would refuse to send)."""
    import shlex

    import botocore.session
    from botocore.validate import validate_parameters

    done, _ = _batch_job(s3, bucket, tmp_path)
    manifest_key = re.search(r"manifest: s3://[^/]+/(\S+) \(3 objects, ETag (\w+)\)", done.stdout)
    assert manifest_key, done.stdout
    key, etag = manifest_key.groups()
    assert etag == s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')

    printed = done.stdout[done.stdout.index("aws s3control create-job") :]
    argv = shlex.split(printed.replace("\\\n", " "))
    assert argv[:3] == ["aws", "s3control", "create-job"]
    options, i = {}, 3
    while i < len(argv):
        if argv[i] == "--no-confirmation-required":
            options[argv[i]] = True
            i += 1
        else:
            options[argv[i]] = argv[i + 1]
            i += 2
    assert options["--region"] == "eu-west-1" and options["--account-id"] == "123456789012"
    assert json.loads(options["--operation"]) == {
        "LambdaInvoke": {
            "FunctionArn": FUNCTION,
            "InvocationSchemaVersion": "2.0",
            "UserArguments": {"backfill": "stale"},
        }
    }
    assert json.loads(options["--manifest"]) == {
        "Spec": {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key"]},
        "Location": {"ObjectArn": f"arn:aws:s3:::{bucket}/{key}", "ETag": etag},
    }
    assert json.loads(options["--report"]) == {
        "Bucket": f"arn:aws:s3:::{bucket}",
        "Format": "Report_CSV_20180820",
        "Enabled": True,
        "Prefix": "batch-operations/reports",
        "ReportScope": "FailedTasksOnly",
    }
    assert options["--role-arn"] == ROLE and options["--priority"] == "10"
    assert options["--no-confirmation-required"] is True

    request = backfill.job_request(
        backfill.JobSpec(
            account_id="123456789012",
            region="eu-west-1",
            function_arn=FUNCTION,
            role_arn=ROLE,
            manifest_arn=f"arn:aws:s3:::{bucket}/{key}",
            manifest_etag=etag,
            report_bucket_arn=f"arn:aws:s3:::{bucket}",
            report_prefix="batch-operations/reports",
            description=options["--description"],
            mode="stale",
            token=options["--client-request-token"],
        )
    )
    assert backfill.cli_command(request, "eu-west-1") == printed.strip()  # the command is this request
    model = botocore.session.get_session().get_service_model("s3control").operation_model("CreateJob")
    validate_parameters(request, model.input_shape)  # raises ParamValidationError on any mistake


def test_schema_2_tasks_from_the_csv_manifest_round_trip_through_the_real_handler(
    s3, bucket, handler, context, tmp_path
):
    """What S3 Batch Operations does with the job: one schema 2.0 invocation per manifest line, the
    line's bucket and (URL-encoded) key in the task; the handler processes each and answers."""
    _, lines = _batch_job(s3, bucket, tmp_path)
    template = json.loads((EVENTS / "s3-batch-operation-v2.json").read_text())
    for n, line in enumerate(lines):
        line_bucket, encoded_key = line.split(",")
        event = json.loads(json.dumps(template))
        event["invocationId"] = f"invocation-{n}"
        event["tasks"][0].update(taskId=f"task-{n}", s3Bucket=line_bucket, s3Key=encoded_key)
        response = handler.lambda_handler(event, context)
        assert response == {
            "invocationSchemaVersion": "2.0",
            "treatMissingKeysAs": "PermanentFailure",
            "invocationId": f"invocation-{n}",
            "results": [{"taskId": f"task-{n}", "resultCode": "Succeeded", "resultString": "processed"}],
        }
        key = unquote_plus(encoded_key)
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags == {"image-pipeline-status": "processed"}
    assert sorted(manifest_etags(s3, bucket)) == sorted([*BATCH_KEYS, "raw/bo/done.jpg"])
    check = run_backfill(tmp_path, f"s3://{bucket}/raw/bo/", "--dry-run")  # the job left nothing to do
    assert summary(check.stdout)["current"] == "4" and summary(check.stdout)["chosen"] == "0"


@pytest.mark.parametrize(
    "key",
    ["raw/bo/plain.jpg", "raw/bo/summer holiday/café + friends.jpg", "raw/bo/a,b 100%.png", "raw/日本/写真.jpg"],
)
def test_csv_line_decodes_back_to_the_key_as_the_handler_reads_it(key):
    bucket, encoded = backfill.csv_line("my-bucket", key).rstrip("\n").split(",")
    assert bucket == "my-bucket" and unquote_plus(encoded) == key and "," not in encoded and " " not in encoded


@pytest.mark.parametrize(
    "url,expected",
    [
        ("s3://photos", ("photos", "raw/")),
        ("s3://photos/", ("photos", "raw/")),
        ("s3://photos/raw", ("photos", "raw/")),
        ("s3://photos/raw/2024/", ("photos", "raw/2024/")),
        ("s3://photos/raw/2024/beach.jpg", ("photos", "raw/2024/beach.jpg")),
        ("s3://photos/processed/", None),
        ("s3://photos/rawish/", None),
        ("photos/raw/", None),
        ("s3:///raw/", None),
    ],
)
def test_the_target_must_be_under_the_raw_prefix(url, expected):
    if expected is None:
        with pytest.raises(backfill.BackfillError):
            backfill.parse_target(url, "raw/")
    else:
        assert backfill.parse_target(url, "raw/") == backfill.Target(*expected)


def test_batch_operations_with_nothing_to_do_creates_no_manifest_and_no_job(s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="raw/done/a.jpg", Body=photo(300, 200))
    assert run_backfill(tmp_path, f"s3://{bucket}/raw/done/").returncode == 0
    done = run_backfill(
        tmp_path,
        f"s3://{bucket}/raw/done/",
        "--batch-operations",
        "--function",
        FUNCTION,
        "--role-arn",
        ROLE,
        "--account-id",
        "123456789012",
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to do: no object needs processing; no job created" in done.stdout
    assert s3.list_objects_v2(Bucket=bucket, Prefix="batch-operations/").get("KeyCount") == 0


@pytest.mark.parametrize(
    "data,fault,result_code,result_string",
    [
        (b"not an image", False, "PermanentFailure", "unsupported_type"),  # a bad image: final, tagged
        (photo(300, 200), True, "TemporaryFailure", "storage_error"),  # S3 throttling throughout: the job retries
    ],
)
def test_schema_2_task_failures_are_reported_per_task(
    s3, bucket, moto_server, handler, settings_env, context, data, fault, result_code, result_string
):
    from tests.reliability.faultproxy import Fault, FaultProxy

    key = "raw/bo/old scan + notes.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    proxy = FaultProxy(upstream=moto_server).start()
    try:
        if fault:
            proxy.add(Fault.slow_down(), method="GET", path=r"/raw/bo/old scan \+ notes\.jpg$", times=None)
        settings_env(AWS_ENDPOINT_URL_S3=proxy.url)
        event = json.loads((EVENTS / "s3-batch-operation-v2.json").read_text())
        event["tasks"][0].update(s3Bucket=bucket, s3Key=backfill.csv_line(bucket, key).rstrip("\n").split(",")[1])
        response = handler.lambda_handler(event, context)
    finally:
        proxy.stop()
    assert response["invocationSchemaVersion"] == "2.0"
    assert response["results"] == [
        {"taskId": event["tasks"][0]["taskId"], "resultCode": result_code, "resultString": result_string}
    ]
    assert proxy.injected("slow_down") == (2 if fault else 0)  # S3_MAX_ATTEMPTS=2: botocore's own retry
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags == ({} if fault else {"image-pipeline-status": "failed", "image-pipeline-error": "unsupported_type"})
