"""The existing-bucket mode (template-existing-bucket.yaml) and the alarms, end to end on moto server.

* S3 -> EventBridge events as the rule delivers them: the rule's own EventPattern (read from the
  template) accepts uploads under raw/ of the named bucket only, and the real handler finds the
  object for keys with spaces, `+`, `%` and non-ASCII characters.
* The metrics the alarms and the dashboard watch are emitted by the real handler with exactly the
  dimensions the templates name (a metric with one dimension more or less is another metric to
  CloudWatch, and an alarm on it would never fire).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from tests.cfn import deploy
from tests.conftest import EVENTS
from tests.images import photo

cfn_yaml = pytest.importorskip("cfnlint.decode.cfn_yaml")

ROOT = Path(__file__).resolve().parents[2]


def _template(name: str) -> dict[str, Any]:
    return cfn_yaml.load(str(ROOT / name))


def _rule_pattern(bucket: str) -> dict[str, Any]:
    """The rule's EventPattern with the ExistingBucketName parameter set to `bucket`."""
    (rule,) = [
        r for r in _template("template-existing-bucket.yaml")["Resources"].values() if r["Type"] == "AWS::Events::Rule"
    ]
    text = json.dumps(rule["Properties"]["EventPattern"]).replace(
        json.dumps({"Ref": "ExistingBucketName"}), json.dumps(bucket)
    )
    return json.loads(text)


def _matches(pattern: Any, event: Any) -> bool:
    """EventBridge matching for what the rule uses: nested fields, lists of exact values, prefix."""
    if isinstance(pattern, dict):
        return isinstance(event, dict) and all(k in event and _matches(v, event[k]) for k, v in pattern.items())
    assert isinstance(pattern, list), pattern
    for option in pattern:
        if isinstance(option, dict):
            ((operator, value),) = option.items()
            assert operator == "prefix", f"the test does not know {operator}"
            if isinstance(event, str) and event.startswith(value):
                return True
        elif event == option:
            return True
    return False


def eventbridge_event(bucket: str, key: str, etag: str | None = None, detail_type: str = "Object Created") -> dict:
    """An S3 -> EventBridge event as S3 sends it: the key URL-encoded as in S3 notifications
    (space as `+`, everything else outside [A-Za-z0-9_.-~/] as %XX of its UTF-8 bytes)."""
    event = json.loads((EVENTS / "eventbridge-object-created.json").read_text())
    event["detail-type"] = detail_type
    event["resources"] = [f"arn:aws:s3:::{bucket}"]
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"]["key"] = quote_plus(key, safe="/")
    if etag:
        event["detail"]["object"]["etag"] = etag
    return event


def test_the_rule_passes_uploads_and_deletions_under_raw_of_that_bucket_only():
    pattern = _rule_pattern("photos.example.com")
    assert _matches(pattern, eventbridge_event("photos.example.com", "raw/2026/a b+c.jpg"))
    assert _matches(pattern, eventbridge_event("photos.example.com", "raw/x.jpg", detail_type="Object Deleted"))
    assert not _matches(pattern, eventbridge_event("photos.example.com", "processed/2026/a/medium.webp"))
    assert not _matches(pattern, eventbridge_event("photos.example.com", "uploads/raw/x.jpg"))
    assert not _matches(pattern, eventbridge_event("other-bucket", "raw/x.jpg"))
    restore = eventbridge_event("photos.example.com", "raw/x.jpg", detail_type="Object Restore Completed")
    assert not _matches(pattern, restore)


@pytest.mark.parametrize(
    "key",
    [
        "raw/summer holiday/café + friends.jpg",
        "raw/a+b/100% sure.jpg",
        "raw/日本/写真 1.jpeg",
        "raw/ümlaut/Ärger+Ölung.png",
    ],
)
def test_eventbridge_keys_with_spaces_plus_and_non_ascii_reach_the_right_object(s3, bucket, handler, context, key):
    fmt = "PNG" if key.endswith(".png") else "JPEG"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=photo(400, 300, fmt))["ETag"].strip('"')
    event = eventbridge_event(bucket, key, etag)
    assert event["detail"]["object"]["key"] != key  # the event really carries the encoded form
    assert _matches(_rule_pattern(bucket), event), "the rule would not deliver this upload"

    result = handler.lambda_handler(event, context)

    assert result["results"] == [{"key": key, "status": "processed", "error_code": None}]
    stem = key.removeprefix("raw/").rsplit(".", 1)[0]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"processed/{stem}/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed) == [
        "large.jpg",
        "manifest.json",
        "medium.webp",
        "thumbnail.webp",
    ]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"processed/{stem}/manifest.json")["Body"].read())
    assert manifest["source"]["key"] == key
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags["image-pipeline-status"] == "processed"


# ---------------------------------------------------------------- the metrics the alarms watch


def _emf(stdout: str) -> dict[str, list[set[str]]]:
    """metric name -> the dimension sets it was emitted with, from the EMF lines on stdout."""
    found: dict[str, list[set[str]]] = {}
    for line in stdout.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                for dims in directive["Dimensions"]:
                    found.setdefault(metric["Name"], []).append(set(dims))
    return found


@pytest.mark.parametrize("name", ["template.yaml", "template-buffered.yaml", "template-existing-bucket.yaml"])
def test_alarms_and_dashboard_watch_metrics_with_the_dimensions_the_handler_emits(
    s3, bucket, handler, context, capsys, name
):
    from aws_lambda_powertools.metrics.provider.base import reset_cold_start_flag_provider

    s3.put_object(Bucket=bucket, Key="raw/m/good.jpg", Body=photo(300, 200))
    s3.put_object(Bucket=bucket, Key="raw/m/bad.jpg", Body=b"not an image at all")
    reset_cold_start_flag_provider()  # this invocation is a cold start, as the first on Lambda is
    capsys.readouterr()
    handler.lambda_handler(eventbridge_event(bucket, "raw/m/good.jpg"), context)
    handler.lambda_handler(eventbridge_event(bucket, "raw/m/bad.jpg"), context)
    emitted = _emf(capsys.readouterr().out)

    # The alarms and the dashboard are stacks/ops.yaml's, as each template nests it (its parameters
    # rendered in the parent's terms: the service is the parent stack's name).
    ops = deploy(name, {"ExistingBucketName": "my-photos"} if name == "template-existing-bucket.yaml" else {})
    ops = ops.nested["OpsStack"]
    alarms = list(ops.of_type("AWS::CloudWatch::Alarm").values())
    own = [a for a in alarms if not a["Namespace"].startswith("AWS/")]
    assert {a["MetricName"] for a in own} == {"ImagesFailed", "StoragePermanentFailures"}
    for alarm in own:
        dims = {d["Name"] for d in alarm["Dimensions"]}
        if alarm["MetricName"] == "StoragePermanentFailures":
            # Not emitted by a good or a bad image (only when S3 refuses for good); it is counted
            # through the same Metrics object, so it carries the same dimension set as ImagesFailed.
            assert dims == {"service"}
            continue
        assert dims in emitted[alarm["MetricName"]], (alarm["MetricName"], dims, emitted.get(alarm["MetricName"]))

    # The dashboard's lines: (metric, its dimension names) exactly as the handler emits them.
    (dashboard,) = ops.of_type("AWS::CloudWatch::Dashboard").values()
    body = dashboard["DashboardBody"]["Fn::Sub"]
    for metric, dims in [
        ("ImagesProcessed", {"service"}),
        ("ImagesFailed", {"service"}),
        ("TotalMs", {"service"}),
        ("ColdStart", {"function_name", "service"}),
        ("ImagesFailedByCode", {"ErrorCode", "service"}),
    ]:
        assert dims in emitted[metric], (metric, emitted.get(metric))
        assert f'"{metric}"' in body or f'MetricName=\\"{metric}\\"' in body, metric
    assert "{ImagePipeline,ErrorCode,service}" in body
