"""Running out of invocation time: before each object the handler compares the context's
remaining time with TIME_RESERVE_MS (10 s by default). Objects it no longer has time for are not
started at all (no request is even sent for them) and are reported for a retry; the ones before
are complete. Nothing is ever left half-written."""

from __future__ import annotations

import pytest

from tests.images import photo
from tests.reliability.support import (
    STATUS,
    VARIANT_FILES,
    all_keys,
    check_manifests,
    s3_event,
    sqs_event,
    tags,
    upload,
)


class ScriptedClock:
    """A Lambda context whose remaining time follows a script, one value per check; it counts the
    checks so the test knows the handler asked before every object (and only then)."""

    function_name = "image-pipeline-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:image-pipeline-test"
    memory_limit_in_mb = 1769
    aws_request_id = "timeout-test"
    log_group_name = "/aws/lambda/image-pipeline-test"
    log_stream_name = "test"

    def __init__(self, *remaining_ms: int) -> None:
        self.script = list(remaining_ms)
        self.calls = 0

    def get_remaining_time_in_millis(self) -> int:
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return value


@pytest.fixture
def objs(s3, bucket):
    return [upload(s3, bucket, f"raw/late/{i}.jpg", photo(320, 240)) for i in range(10)]


def test_an_sqs_batch_that_runs_out_of_time_finishes_the_first_records_and_returns_the_rest(
    s3, bucket, handler, objs, proxy, settings_env
):
    settings_env(AWS_ENDPOINT_URL_S3=proxy.url)  # TIME_RESERVE_MS: the 10 000 ms default
    clock = ScriptedClock(60_000, 45_000, 30_000, 15_000, 9_999)  # then 9 999 ms for every later check

    result = handler.lambda_handler(sqs_event(bucket, objs), clock)

    assert result == {"batchItemFailures": [{"itemIdentifier": f"msg-{i}"} for i in range(4, 10)]}
    assert clock.calls == len(objs)  # asked once per object, before starting it
    assert len(check_manifests(s3, bucket)) == 4
    for i, obj in enumerate(objs):
        if i < 4:
            assert tags(s3, bucket, obj.key) == {STATUS: "processed"}
            assert len(all_keys(s3, bucket, f"processed/late/{i}/")) == len(VARIANT_FILES) + 1
        else:  # not started: no GET, no PUT, no tag - the message simply comes back later
            assert tags(s3, bucket, obj.key) == {}
            assert all_keys(s3, bucket, f"processed/late/{i}/") == []
            assert proxy.requests(path=f"/late/{i}[./]") == []

    retry = sqs_event(bucket, objs[4:], first_id=4)  # what SQS redelivers
    assert handler.lambda_handler(retry, ScriptedClock(60_000)) == {"batchItemFailures": []}
    assert len(check_manifests(s3, bucket)) == 10
    assert all(tags(s3, bucket, o.key) == {STATUS: "processed"} for o in objs)


def test_a_direct_notification_that_runs_out_of_time_raises_and_its_replay_completes(s3, bucket, handler, objs):
    first, second, third = objs[:3]
    with pytest.raises(handler.RetryLater, match=r"2 object\(s\).*late/1.jpg.*late/2.jpg"):
        handler.lambda_handler(s3_event(bucket, [first, second, third]), ScriptedClock(30_000, 500))
    assert tags(s3, bucket, first.key) == {STATUS: "processed"}
    assert tags(s3, bucket, second.key) == {} and tags(s3, bucket, third.key) == {}
    assert [m["source"]["key"] for m in check_manifests(s3, bucket)] == [first.key]

    replay = handler.lambda_handler(s3_event(bucket, [first, second, third]), ScriptedClock(30_000))
    assert [r["status"] for r in replay["results"]] == ["skipped", "processed", "processed"]


def test_the_reserve_is_configurable(s3, bucket, handler, objs, settings_env):
    # 5 s left: under the default 10 s reserve nothing would start; with no reserve both finish
    settings_env(TIME_RESERVE_MS="0")
    result = handler.lambda_handler(sqs_event(bucket, objs[:2]), ScriptedClock(5_000))
    assert result == {"batchItemFailures": []}


def test_an_image_still_being_processed_is_cut_off_at_the_time_bound_and_writes_nothing(
    s3, bucket, handler, settings_env
):
    """The image runs in a worker thread, so the time bound cuts the record off while the image is
    still being processed (not only at its next S3 call). The thread cannot be stopped: it finishes,
    its result is dropped, and nothing is written; the retry processes the image."""
    import time

    from tests.gated import GatedProcessor

    runtime = settings_env(TIME_RESERVE_MS="1000")
    gated = GatedProcessor.replacing(runtime.service)
    obj = upload(s3, bucket, "raw/slow/big.jpg", photo(640, 480))

    try:
        with pytest.raises(handler.RetryLater, match=r"slow/big\.jpg"):
            handler.lambda_handler(s3_event(bucket, [obj]), ScriptedClock(3_000))  # 2 s for the record
        assert gated.entered.is_set() and not gated.done.is_set()  # cut off mid-image
    finally:
        gated.gate.set()
    assert gated.done.wait(30)
    deadline = time.monotonic() + 10
    while runtime.service.pool.in_flight and time.monotonic() < deadline:  # the slot comes back with the thread
        time.sleep(0.01)
    assert runtime.service.pool.in_flight == 0
    assert all_keys(s3, bucket, "processed/slow/") == []
    assert tags(s3, bucket, obj.key) == {}

    result = handler.lambda_handler(s3_event(bucket, [obj]), ScriptedClock(60_000))
    assert [r["status"] for r in result["results"]] == ["processed"]
    assert len(all_keys(s3, bucket, "processed/slow/big/")) == len(VARIANT_FILES) + 1
