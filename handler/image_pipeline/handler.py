"""Lambda entry point: parse the event, run the service per object, log, count, report.

Failures by kind: a bad image is tagged and counted and the invocation still succeeds (a retry
cannot fix it). A storage failure or lack of time is reported so the object is retried: by
raising for S3/EventBridge invocations (Lambda retries, then the on-failure destination), as a
batch item failure for SQS, or as a `TemporaryFailure` result for S3 Batch Operations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import S3BatchOperationEvent, S3BatchOperationResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from . import events
from .errors import OutOfTime, PipelineError
from .runtime import Runtime
from .service import ObjectRef, Outcome
from .settings import Settings

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "image-pipeline")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImagePipeline")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
# auto_patch=False: X-Ray's aiobotocore patch keeps one subsegment stack per thread, so the
# concurrent variant PUTs end each other's subsegments (AlreadyEndedException) and every image
# fails. Each record is still traced as a subsegment (`_handle`); it also saves ~150 ms of import.
tracer = Tracer(service=SERVICE, auto_patch=False)
runtime = Runtime(Settings.from_env())  # cold start: a bad setting fails here, with every problem named


class RetryLater(Exception):
    """Some objects could not be finished now; raising makes Lambda retry the event."""


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: Any) -> Mapping[str, Any]:
    if events.is_batch_operation(event):
        return _batch_operation(event, context)
    if events.is_sqs(event):
        return process_partial_response(
            event=event,
            record_handler=lambda record: _sqs_record(record, context),
            # Every failed message is listed, even when all failed (Powertools would otherwise
            # raise and turn a normal retry into an invocation error).
            processor=BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False),
            context=context,
        )
    outcomes = _raise_for_retries(handle_refs(events.object_refs(event), context))
    return {"results": [{"key": o.key, "status": o.status, "error_code": o.error_code} for o in outcomes]}


# Outcome → S3 Batch Operations result: a bad image is final, a storage failure is retried.
_BatchResult = Literal["Succeeded", "TemporaryFailure", "PermanentFailure"]
_BATCH_RESULT: dict[str, _BatchResult] = {
    "retry": "TemporaryFailure",
    "failed": "PermanentFailure",
    "gone": "PermanentFailure",
}


def _batch_operation(event: dict, context: Any) -> dict:
    """One S3 Batch Operations task (a backfill of objects already in the bucket).

    Invocation schema 1.0 names the bucket by ARN (`s3BucketArn`), 2.0 by name (`s3Bucket`) and adds
    the job's `userArguments`; both send the key URL-encoded, as written in the job's CSV manifest
    (Powertools' `s3_key` decodes it). The reply echoes the schema version and the invocation id."""
    job = S3BatchOperationEvent(event)
    task = job.task
    logger.append_keys(batch_job_id=job.job.get_id, invocation_schema_version=job.invocation_schema_version)
    (outcome,) = handle_refs([ObjectRef(task.s3_bucket, task.s3_key)], context)
    response = S3BatchOperationResponse(job.invocation_schema_version, job.invocation_id, "PermanentFailure")
    result = _BATCH_RESULT.get(outcome.status, "Succeeded")
    response.add_result(task.build_task_batch_response(result, outcome.error_code or outcome.status))
    return response.asdict()


def _sqs_record(record: SQSRecord, context: Any) -> None:
    _raise_for_retries(handle_refs(events.refs_from_body(record.body), context))


def _raise_for_retries(outcomes: list[Outcome]) -> list[Outcome]:
    retry = [o.key for o in outcomes if o.status == "retry"]
    if retry:
        raise RetryLater(f"{len(retry)} object(s) must be retried: {retry}")
    return outcomes


def handle_refs(refs: list[ObjectRef], context: Any) -> list[Outcome]:
    """Each object in turn; one failing never stops the next."""
    outcomes = []
    for ref in refs:
        logger.append_keys(bucket=ref.bucket, key=ref.key)
        try:
            outcomes.append(_handle(ref, context))
        finally:
            logger.remove_keys(["bucket", "key"])
    return outcomes


@tracer.capture_method(capture_response=False)
def _handle(ref: ObjectRef, context: Any) -> Outcome:
    remaining = context.get_remaining_time_in_millis() if context is not None else None
    reserve = runtime.settings.time_reserve_ms
    try:
        if remaining is not None and remaining < reserve:
            raise OutOfTime(f"{remaining} ms left, {reserve} ms reserved")
        # Every S3 call of this object ends by then (a stalled one is cut off: out_of_time).
        outcome = runtime.handle(ref, timeout_s=None if remaining is None else (remaining - reserve) / 1000)
    except PipelineError as exc:
        if exc.permanent:  # storage_denied: a retry cannot help; an operator must fix the cause
            logger.error(
                "object failed permanently; not retried",
                extra={"status": "failed", "error_code": exc.code, "error": exc.message},
                exc_info=True,
            )
            metrics.add_metric(name="StoragePermanentFailures", unit=MetricUnit.Count, value=1)
            return Outcome("failed", ref.key, reason=exc.message, error_code=exc.code)
        # storage_error, out_of_time: transient
        logger.error(
            "object will be retried",
            extra={"status": "retry", "error_code": exc.code, "error": exc.message},
            exc_info=not isinstance(exc, OutOfTime),
        )
        metrics.add_metric(name="ImagesRetried", unit=MetricUnit.Count, value=1)
        return Outcome("retry", ref.key, reason=exc.message, error_code=exc.code)
    _record(outcome)
    return outcome


def _record(outcome: Outcome) -> None:
    if outcome.tags_dropped:  # the uploader's own tags fill S3's 10: the status could not be set
        logger.warning(
            "no room for the pipeline's tags on the raw object",
            extra={"status": outcome.status, "tags_dropped": outcome.tags_dropped},
        )
        metrics.add_metric(name="TagsFull", unit=MetricUnit.Count, value=1)
    fields = {
        "status": outcome.status,
        "bytes_in": outcome.bytes_in,
        "bytes_out": outcome.bytes_out,
        "processing_ms": outcome.processing_ms,
        "total_ms": round(outcome.total_ms, 1),
    }
    if outcome.status == "processed":
        logger.info("image processed", extra={**fields, "outputs": len(outcome.outputs)})
        metrics.add_metric(name="ImagesProcessed", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="BytesIn", unit=MetricUnit.Bytes, value=outcome.bytes_in)
        metrics.add_metric(name="BytesOut", unit=MetricUnit.Bytes, value=outcome.bytes_out)
        metrics.add_metric(name="ProcessingMs", unit=MetricUnit.Milliseconds, value=outcome.processing_ms)
        metrics.add_metric(name="TotalMs", unit=MetricUnit.Milliseconds, value=round(outcome.total_ms, 1))
    elif outcome.status == "failed":
        logger.warning("image rejected", extra={**fields, "error_code": outcome.error_code, "error": outcome.reason})
        metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=1)
        with single_metric(name="ImagesFailedByCode", unit=MetricUnit.Count, value=1, namespace=NAMESPACE) as metric:
            metric.add_dimension(name="ErrorCode", value=outcome.error_code or "unknown")
    elif outcome.status == "removed":  # the raw object was deleted: so are its outputs
        logger.info("outputs removed", extra={**fields, "reason": outcome.reason, "outputs": len(outcome.outputs)})
        metrics.add_metric(name="ImagesRemoved", unit=MetricUnit.Count, value=1)
    else:  # skipped, ignored, gone (a key that vanished, or an event naming a key that never existed)
        log = logger.warning if outcome.status == "gone" else logger.info
        log(f"object {outcome.status}", extra={**fields, "reason": outcome.reason})
        metrics.add_metric(name="ImagesSkipped", unit=MetricUnit.Count, value=1)
