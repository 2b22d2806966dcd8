"""`image-pipeline backfill`: bring every object already under `raw/` up to date, locally or as an
S3 Batch Operations job.

A room above the service, beside the handler, never a second pipeline: each worker process builds
the Lambda's own composition (`Runtime` from `Settings.from_env()`), opens one S3 client, and asks
the service two things per object: its state (`ImageService.state`: missing, stale or current, from
the manifest) and, for the chosen ones, the same per-image job an S3 event runs
(`ImageService.handle`: variants, manifest last, then the raw object's tag).

The main process lists the prefix page by page and hands the workers small chunks through a
bounded queue, so a bucket of millions is never held in memory. Ctrl-C (or SIGTERM) lets each
worker finish the image it is on and stops; a rerun resumes, because finished images are current.
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing
import multiprocessing.util
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import ImageRejected, PipelineError
from .service import ObjectRef

STATES = ("missing", "stale", "current")
# --only-missing | --stale (default) | --all → the states that are processed (or put in the job).
MODES: dict[str, frozenset[str]] = {
    "only-missing": frozenset({"missing"}),
    "stale": frozenset({"missing", "stale"}),
    "all": frozenset(STATES),
}
CHUNK = 16  # objects per task: their manifests are read concurrently, the chosen ones processed in turn
RETRIES = 2  # more passes at an object after a transient failure (on top of botocore's own retries)
SAMPLE = 10  # keys per state printed by --dry-run
MANIFEST_PREFIX = "batch-operations/"  # the job's CSV and its report go here: outside raw/ and processed/


class BackfillError(Exception):
    """A problem with the command line or the bucket, reported in one line (exit status 2)."""


# ---------------------------------------------------------------- what to work on


@dataclass(frozen=True)
class Target:
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_target(url: str, raw_prefix: str) -> Target:
    """`s3://BUCKET/raw/[PREFIX]` → Target; the prefix must lie under the raw prefix (outputs and
    anything else in the bucket are never touched)."""
    if not url.startswith("s3://"):
        raise BackfillError(f"{url!r}: expected s3://BUCKET/{raw_prefix}[PREFIX]")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise BackfillError(f"{url!r}: no bucket name")
    if raw_prefix.startswith(prefix):
        prefix = raw_prefix  # s3://bucket, s3://bucket/ and s3://bucket/raw mean the whole raw prefix
    if not prefix.startswith(raw_prefix):
        raise BackfillError(f"{url!r} is outside RAW_PREFIX={raw_prefix!r}: only raw uploads are processed")
    return Target(bucket, prefix)


def list_objects(client: Any, target: Target) -> Iterator[ObjectRef]:
    """Every object under the prefix, one ListObjectsV2 page (≤ 1000 keys) at a time."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=target.bucket, Prefix=target.prefix, PaginationConfig={"PageSize": 1000}):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue  # a console "folder" marker, not an upload
            yield ObjectRef(target.bucket, item["Key"], item["ETag"].strip('"'), item["Size"])


# ---------------------------------------------------------------- one object's result


@dataclass
class Result:
    """What happened to one object (sent back from a worker process)."""

    key: str
    state: str  # missing | stale | current | unknown (the state itself could not be read)
    status: str  # processed | skipped | failed | gone | ignored | chosen (decide only) | interrupted
    error_code: str | None = None
    reason: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    retried: int = 0
    cpu_s: float = 0.0  # the worker's CPU time for this object (processing + S3 client work)
    total_ms: float = 0.0  # the service's wall time for the pass that counted (Outcome.total_ms)


# ---------------------------------------------------------------- worker processes


class Worker:
    """One per process: the Lambda's composition, one event loop, one S3 client."""

    def __init__(self) -> None:
        from .runtime import Runtime
        from .settings import Settings

        self.runtime = Runtime(Settings.from_env())  # exactly as the Lambda builds it at cold start
        self.service = self.runtime.service
        self._runner = asyncio.Runner()
        self._connection: Any = None

    def decide(self, refs: tuple[ObjectRef, ...], chosen: frozenset[str]) -> list[Result]:
        """Each object's state, their manifests read concurrently: `chosen` or `skipped`."""
        return self._runner.run(self._decide(refs, chosen))

    def process(self, ref: ObjectRef, state: str) -> Result:
        return self._runner.run(self._process(ref, state))

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._runner.run(connection.close())
        self._runner.close()
        self.runtime.close()

    async def _store(self, bucket: str) -> Any:
        if self._connection is None:
            from .storage.s3 import S3Connection

            settings = self.runtime.settings  # the same client settings as the Lambda's runtime
            self._connection = await S3Connection.open(
                endpoint_url=settings.s3_endpoint_url,
                cache_control=settings.cache_control,
                max_attempts=settings.s3_max_attempts,
            )
        return self._connection.store(bucket)

    async def _decide(self, refs: tuple[ObjectRef, ...], chosen: frozenset[str]) -> list[Result]:
        store = await self._store(refs[0].bucket)
        return list(await asyncio.gather(*(self._state(store, ref, chosen) for ref in refs)))

    async def _state(self, store: Any, ref: ObjectRef, chosen: frozenset[str]) -> Result:
        """The service's decision for one object; a transient failure is tried again."""
        for attempt in range(RETRIES + 1):
            try:
                state = await self.service.state(store, ref.key, ref.etag)
            except ImageRejected:
                state = "missing"  # e.g. an invalid key: processing rejects it and tags it with the code
            except PipelineError as exc:
                if exc.permanent or attempt == RETRIES:
                    return Result(ref.key, "unknown", "failed", exc.code, exc.message, retried=attempt)
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            return Result(ref.key, state, "chosen" if state in chosen else "skipped", retried=attempt)
        raise AssertionError("unreachable")

    async def _process(self, ref: ObjectRef, state: str) -> Result:
        """`ImageService.handle`, the event path's per-image job; transient failures tried again."""
        started = time.process_time()
        store = await self._store(ref.bucket)
        for attempt in range(RETRIES + 1):
            try:
                outcome = await self.service.handle(store, ref, force=state == "current")
            except PipelineError as exc:  # storage failures: the service left the raw object as it was
                if exc.permanent or attempt == RETRIES:
                    return Result(
                        ref.key,
                        state,
                        "failed",
                        exc.code,
                        exc.message,
                        retried=attempt,
                        cpu_s=time.process_time() - started,
                    )
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the other objects; it is listed as a failure
                return Result(
                    ref.key,
                    state,
                    "failed",
                    "unexpected_error",
                    f"{type(exc).__name__}: {exc}",
                    retried=attempt,
                    cpu_s=time.process_time() - started,
                )
            return Result(
                ref.key,
                state,
                outcome.status,
                outcome.error_code,
                outcome.reason,
                bytes_in=outcome.bytes_in,
                bytes_out=outcome.bytes_out,
                retried=attempt,
                cpu_s=time.process_time() - started,
                total_ms=outcome.total_ms,
            )
        raise AssertionError("unreachable")


_worker: Worker | None = None


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: only the main process decides what stops, and it lets
    # each worker finish the image it is on (the manifest is written last either way).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    global _worker
    _worker = Worker()
    # A pool's worker process ends through os._exit: only multiprocessing's own finalizers run, so
    # the S3 sessions are closed by one of those (not left to the interpreter's teardown).
    multiprocessing.util.Finalize(None, _worker.close, exitpriority=10)


def _decide(refs: tuple[ObjectRef, ...], chosen: frozenset[str]) -> list[Result]:
    assert _worker is not None, "worker not initialised"
    return _worker.decide(refs, chosen)


def _process(ref: ObjectRef, state: str) -> list[Result]:
    assert _worker is not None, "worker not initialised"
    return [_worker.process(ref, state)]


# ---------------------------------------------------------------- the run


@dataclass
class Summary:
    target: str
    mode: str
    workers: int
    listed: int = 0
    states: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)  # error code → count
    skipped: Counter = field(default_factory=Counter)  # state → count, for the objects not processed
    retried: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_s: float = 0.0
    elapsed_s: float = 0.0
    interrupted: bool = False
    samples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        self.listed += 1
        self.states[result.state] += 1
        self.statuses[result.status] += 1
        if result.status == "failed":
            self.failed[result.error_code or "unknown"] += 1
        elif result.status == "skipped":
            self.skipped[result.state] += 1
        self.retried += result.retried
        self.bytes_in += result.bytes_in
        self.bytes_out += result.bytes_out
        self.cpu_s += result.cpu_s
        sample = self.samples.setdefault(result.state, [])
        if len(sample) < SAMPLE:
            sample.append(result.key)

    @property
    def processed(self) -> int:
        return self.statuses["processed"]

    @property
    def failures(self) -> int:
        return self.statuses["failed"]


def run(
    refs: Iterable[ObjectRef],
    *,
    chosen: frozenset[str],
    process: bool,
    workers: int,
    summary: Summary,
    stop: threading.Event,
    on_result: Callable[[Result], None] = lambda result: None,
) -> Summary:
    """Decide in chunks of `CHUNK` objects, then process each chosen object as its own task (so the
    workers stay evenly loaded and a stop waits for one image per worker at most). Never more than
    `2 × workers` tasks are queued and one listing page held: memory does not grow with the bucket.

    `process` False: only decide (every chosen object comes back as `chosen`). `stop` set (by a
    signal): nothing new is started; the chosen objects not yet started are counted `interrupted`."""
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads and open sockets
    inflight: dict[Future, tuple[ObjectRef, ...]] = {}
    waiting: deque[tuple[ObjectRef, str]] = deque()  # decided and chosen, not yet handed to a worker
    limit = workers * 2
    chunks = _chunks(refs, CHUNK)

    def finish(result: Result) -> None:
        summary.add(result)
        on_result(result)

    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            exhausted = False
            while True:
                while not stop.is_set() and len(inflight) < limit:
                    if waiting:  # processing first: deciding runs ahead by a few chunks at most
                        ref, state = waiting.popleft()
                        inflight[pool.submit(_process, ref, state)] = (ref,)
                        continue
                    chunk = None if exhausted else next(chunks, None)
                    if chunk is None:
                        exhausted = True
                        break
                    inflight[pool.submit(_decide, tuple(chunk), chosen)] = tuple(chunk)
                if not inflight:
                    break
                finished, _ = wait(inflight, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    for ref, result in zip(inflight.pop(future), future.result(), strict=True):
                        if process and result.status == "chosen":
                            waiting.append((ref, result.state))
                        else:
                            finish(result)
            for ref, state in waiting:  # stopped: decided, never started
                finish(Result(ref.key, state, "interrupted"))
    finally:
        summary.elapsed_s = time.perf_counter() - started
    summary.interrupted = stop.is_set()
    return summary


def _chunks(refs: Iterable[ObjectRef], size: int) -> Iterator[list[ObjectRef]]:
    chunk: list[ObjectRef] = []
    for ref in refs:
        if chunk and (len(chunk) == size or ref.bucket != chunk[0].bucket):
            yield chunk
            chunk = []
        chunk.append(ref)
    if chunk:
        yield chunk


# ---------------------------------------------------------------- progress and summary


class Progress:
    """Live progress on stderr: a rich bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, summary: Summary, process: bool, enabled: bool = True) -> None:
        self.summary = summary
        self.process = process
        self.total: int | None = None
        self._bar: Any = None
        self._task: Any = None
        self._last_line = time.monotonic()
        self._started = time.monotonic()
        if not enabled:
            self._plain = False
            return
        self._plain = not sys.stderr.isatty()
        if not self._plain:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
                from rich.progress import Progress as RichProgress
            except ImportError:  # rich is in the `cli` extra; without it, plain lines
                self._plain = True
            else:
                self._bar = RichProgress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    refresh_per_second=4,
                )
                self._task = self._bar.add_task("backfill", total=None, stats="listing…")

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.summary.listed, stats=self._stats())
            self._bar.stop()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def update(self, result: Result) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.summary.listed, stats=self._stats())
        elif self._plain and time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            total = f"/{self.total}" if self.total is not None else ""
            print(f"backfill: {self.summary.listed}{total} {self._stats()}", file=sys.stderr, flush=True)

    def _stats(self) -> str:
        s = self.summary
        elapsed = max(time.monotonic() - self._started, 1e-6)
        if not self.process:
            return f"{s.listed / elapsed:.0f} objects/s"
        return (
            f"{s.processed / elapsed:.1f} images/s  in {s.bytes_in / 1e6:.1f} MB  out {s.bytes_out / 1e6:.1f} MB  "
            f"failed {s.failures}"
        )


def count_in_background(client: Any, target: Target, progress: Progress, stop: threading.Event) -> threading.Thread:
    """A second, cheap listing that runs ahead of the work (which waits on the bounded queue) and
    gives the progress bar its total and ETA. 1000 keys per LIST request: $0.005 per million keys."""

    def count() -> None:
        total = 0
        try:
            for _ in list_objects(client, target):
                total += 1
                if stop.is_set():
                    return
        except Exception:  # noqa: BLE001 - only a count for the progress bar: the main listing reports the error
            return
        progress.set_total(total)

    thread = threading.Thread(target=count, name="backfill-count", daemon=True)
    thread.start()
    return thread


def format_summary(summary: Summary, process: bool) -> str:
    s = summary
    rows: list[tuple[str, str]] = [("objects listed", str(s.listed))]
    rows += [(f"  {state}", str(s.states[state])) for state in (*STATES, "unknown") if s.states[state]]
    if process:
        rows.append(("processed", str(s.processed)))
        skipped = s.statuses["skipped"] + s.statuses["gone"] + s.statuses["ignored"]
        reasons = [(state, s.skipped[state]) for state in STATES]
        reasons += [("gone", s.statuses["gone"]), ("outside the raw prefix", s.statuses["ignored"])]
        detail = ", ".join(f"{n} {reason}" for reason, n in reasons if n)
        rows.append(("skipped", f"{skipped}" + (f" ({detail})" if detail else "")))
        rows.append(("failed", str(s.failures)))
        rows += [(f"  {code}", str(n)) for code, n in sorted(s.failed.items())]
        rows.append(("retried", str(s.retried)))
        if s.statuses["interrupted"]:
            rows.append(("not started (interrupted)", str(s.statuses["interrupted"])))
        rows.append(("MB in / out", f"{s.bytes_in / 1e6:.1f} / {s.bytes_out / 1e6:.1f}"))
        rate = s.processed / s.elapsed_s if s.elapsed_s else 0.0
        rows.append(("images/s", f"{rate:.2f}"))
        if s.processed:
            rows.append(("worker CPU s per image", f"{s.cpu_s / s.processed:.3f}"))
    else:
        rows.append(("chosen", str(s.statuses["chosen"])))
        if s.failures:
            rows.append(("state unreadable", str(s.failures)))
    rows.append(("elapsed s", f"{s.elapsed_s:.1f}"))
    width = max(len(r[0]) for r in rows)
    head = f"backfill {s.target} --{s.mode}, {s.workers} worker{'s' if s.workers != 1 else ''}"
    return "\n".join([head, *(f"{name.ljust(width)}  {value}" for name, value in rows)])


class FailureLog:
    """Failed keys as CSV (key, error_code, reason), written as they come; opened on the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._writer: Any = None

    def __call__(self, result: Result) -> None:
        if result.status != "failed":
            return
        if self._file is None:
            self._file = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["key", "error_code", "reason"])
        self._writer.writerow([result.key, result.error_code or "", result.reason])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# ---------------------------------------------------------------- S3 Batch Operations


def csv_line(bucket: str, key: str) -> str:
    """One manifest line: S3 Batch Operations wants keys URL-encoded (the task's `s3Key` comes back
    the same way and the handler decodes it; `+` is encoded, so a decoder of `+` as space is safe)."""
    return f"{bucket},{quote(key, safe='/')}\n"


@dataclass(frozen=True)
class JobSpec:
    account_id: str
    region: str
    function_arn: str
    role_arn: str
    manifest_arn: str
    manifest_etag: str
    report_bucket_arn: str
    report_prefix: str
    description: str
    mode: str
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    priority: int = 10


def job_request(spec: JobSpec) -> dict:
    """The `s3control.create_job` parameters: invoke the function on every manifest line with
    payload schema 2.0, a completion report of the failed tasks."""
    return {
        "AccountId": spec.account_id,
        "ConfirmationRequired": False,
        "Operation": {
            "LambdaInvoke": {
                "FunctionArn": spec.function_arn,
                "InvocationSchemaVersion": "2.0",
                "UserArguments": {"backfill": spec.mode},
            }
        },
        "Manifest": {
            "Spec": {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key"]},
            "Location": {"ObjectArn": spec.manifest_arn, "ETag": spec.manifest_etag},
        },
        "Report": {
            "Bucket": spec.report_bucket_arn,
            "Format": "Report_CSV_20180820",
            "Enabled": True,
            "Prefix": spec.report_prefix,
            "ReportScope": "FailedTasksOnly",
        },
        "Priority": spec.priority,
        "RoleArn": spec.role_arn,
        "ClientRequestToken": spec.token,
        "Description": spec.description[:256],
    }


def cli_command(request: dict, region: str) -> str:
    """The same request as an `aws s3control create-job` command line."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    options: list[tuple[str, str | None]] = [
        ("--region", region),
        ("--account-id", request["AccountId"]),
        ("--no-confirmation-required", None),
        ("--operation", compact(request["Operation"])),
        ("--manifest", compact(request["Manifest"])),
        ("--report", compact(request["Report"])),
        ("--priority", str(request["Priority"])),
        ("--role-arn", request["RoleArn"]),
        ("--client-request-token", request["ClientRequestToken"]),
        ("--description", request["Description"]),
    ]
    lines = ["aws s3control create-job"] + [flag if v is None else f"{flag} {shlex.quote(v)}" for flag, v in options]
    return " \\\n  ".join(lines)


def console_link(job_id: str, region: str) -> str:
    return f"https://console.aws.amazon.com/s3/jobs/{job_id}?region={region}"


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise BackfillError(f"{url!r}: expected s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix


# ---------------------------------------------------------------- the command


def command(args: Any) -> int:
    """`image-pipeline backfill …` (arguments parsed by cli.py)."""
    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.endpoint_url  # the workers read it, as the Lambda does
    from .settings import Settings

    settings = Settings.from_env()  # a bad setting stops here, with every problem named
    target = parse_target(args.target, settings.raw_prefix)
    mode = args.mode
    if args.workers is not None and args.workers < 1:
        raise BackfillError("--workers must be at least 1")
    workers = args.workers or os.cpu_count() or 1

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    try:
        s3.head_bucket(Bucket=target.bucket)
    except (BotoCoreError, ClientError) as exc:
        raise BackfillError(f"cannot read s3://{target.bucket}: {exc}") from None

    if getattr(args, "moderate", False):
        return moderate(settings, s3, target, dry_run=args.dry_run, quiet=args.quiet)

    decide_only = args.dry_run or args.batch_operations
    summary = Summary(target.url, mode, workers)
    stop = threading.Event()
    received: list[int] = []
    previous = _install_signals(stop, received)
    failures = FailureLog(Path(args.failed_keys))  # rewritten by every run: it lists this run's failures
    failures.path.unlink(missing_ok=True)
    manifest = _ManifestWriter(target.bucket) if args.batch_operations and not args.dry_run else None

    def on_result(result: Result) -> None:
        failures(result)
        if manifest is not None and result.status == "chosen":
            manifest.add(result.key)
        progress.update(result)

    progress = Progress(summary, process=not decide_only, enabled=not args.quiet)
    try:
        with progress:
            count_in_background(boto3.client("s3", endpoint_url=settings.s3_endpoint_url), target, progress, stop)
            run(
                list_objects(s3, target),
                chosen=MODES[mode],
                process=not decide_only,
                workers=workers,
                summary=summary,
                stop=stop,
                on_result=on_result,
            )
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, a rerun redoes what had no manifest yet
        for child in multiprocessing.active_children():
            child.terminate()
        summary.interrupted = True
        print("\nbackfill: stopped at once (second interrupt)", file=sys.stderr)
    except BrokenProcessPool as exc:  # a worker was killed (out of memory?): what it held has no manifest
        print(format_summary(summary, process=not decide_only))
        raise BackfillError(f"a worker process died ({exc}); run the same command again to resume") from None
    except (BotoCoreError, ClientError) as exc:  # listing the bucket failed after botocore's retries
        raise BackfillError(f"listing {target.url} failed: {exc}") from None
    finally:
        _restore_signals(previous)
        failures.close()

    print(format_summary(summary, process=not decide_only))
    if args.dry_run:
        _print_samples(summary, MODES[mode])
    if summary.interrupted:
        print(
            f"\ninterrupted: {summary.processed} processed before stopping; run the same command again to "
            "resume (images already current are skipped)",
            file=sys.stderr,
        )
        if manifest is not None:
            manifest.discard()
        return 128 + (received[0] if received else signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    if manifest is not None:
        code = _batch_operations(args, settings, s3, target, mode, summary, manifest)
        if code:
            return code
    if summary.failures:
        print(f"\n{summary.failures} failed; keys and error codes written to {failures.path}", file=sys.stderr)
        return 1
    return 0


def moderate(settings: Any, s3: Any, target: Target, *, dry_run: bool, quiet: bool = False) -> int:
    """`backfill --moderate`: the moderation gate over images published before it was on.

    One process, one image at a time (the engine is the bottleneck: a model or a Rekognition call);
    for each raw object whose outputs are published without a verdict, the largest variant is
    classified. `--dry-run` prints what would be held and changes nothing; without it those images
    are held (outputs removed, raw tagged `held`, the moderation record written: they join the
    review queue). Images already judged, or not published, are skipped; a rerun resumes."""
    if settings.moderation == "off":
        raise BackfillError("--moderate needs MODERATION=local or rekognition in the environment")
    from .runtime import Runtime

    runtime = Runtime(settings)
    counts: Counter[str] = Counter()
    flagged: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []

    async def each() -> None:
        store = await runtime.store(target.bucket)
        for ref in list_objects(s3, target):
            outcome = await runtime.service.moderate_published(store, ref, apply=not dry_run)
            counts[outcome.status] += 1
            if outcome.status in ("held", "would_hold"):
                flagged.append((ref.key, outcome.reason))
                if not quiet:
                    print(f"{'would hold' if outcome.status == 'would_hold' else 'held'}: {ref.key}  {outcome.reason}")
            elif outcome.status == "failed":
                failed.append((ref.key, outcome.reason))

    try:
        runtime.run(each)
    finally:
        runtime.close()
    verb = "would hold" if dry_run else "held"
    print(
        f"moderate {target.url}: {counts['passed']} passed, {len(flagged)} {verb}, "
        f"{counts['skipped']} skipped (not published, or judged already), {len(failed)} without a verdict"
    )
    for key, reason in failed:
        print(f"  no verdict: {key}: {reason}", file=sys.stderr)
    if dry_run and flagged:
        print("run again without --dry-run to hold them")
    return 1 if failed else 0


def _print_samples(summary: Summary, chosen: frozenset[str]) -> None:
    print(f"\nwould process {sum(summary.states[s] for s in chosen)} object(s) ({', '.join(sorted(chosen))})")
    for state in STATES:
        keys = summary.samples.get(state)
        if keys:
            print(f"\n{state} (first {len(keys)} of {summary.states[state]}):")
            for key in keys:
                print(f"  {key}")


def _install_signals(stop: threading.Event, received: list[int]) -> dict:
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()
        print(
            f"\nbackfill: {signal.Signals(signum).name}: finishing the images in progress (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class _ManifestWriter:
    """The chosen keys as a Batch Operations CSV manifest, streamed to a local temporary file."""

    def __init__(self, bucket: str) -> None:
        import tempfile

        self.bucket = bucket
        self.count = 0
        self._file = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, encoding="utf-8", newline="")
        self.path = Path(self._file.name)

    def add(self, key: str) -> None:
        self._file.write(csv_line(self.bucket, key))
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _batch_operations(
    args: Any, settings: Any, s3: Any, target: Target, mode: str, summary: Summary, manifest: _ManifestWriter
) -> int:
    manifest.close()
    try:
        if summary.failures:
            print(
                f"\n{summary.failures} object(s) whose state could not be read are not in the job; "
                f"see {args.failed_keys}",
                file=sys.stderr,
            )
        if manifest.count == 0:
            print("\nnothing to do: no object needs processing; no job created")
            return 0
        import boto3

        session = boto3.session.Session()
        region = args.region or session.region_name or "us-east-1"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        manifest_key = f"{MANIFEST_PREFIX}manifests/backfill-{stamp}-{uuid.uuid4().hex[:8]}.csv"
        s3.upload_file(str(manifest.path), target.bucket, manifest_key, ExtraArgs={"ContentType": "text/csv"})
        etag = s3.head_object(Bucket=target.bucket, Key=manifest_key)["ETag"].strip('"')
        report_bucket, report_prefix = (
            parse_s3_url(args.report) if args.report else (target.bucket, f"{MANIFEST_PREFIX}reports")
        )
        account_id = args.account_id or _account_id(session, region)
        function_arn = args.function or _stack_output(session, region, args.stack, "FunctionArn")
        role_arn = args.role_arn
        if not role_arn:
            if not args.print_only:
                raise BackfillError(
                    "--batch-operations needs --role-arn: a role S3 Batch Operations can assume "
                    "(see docs/backfill.md, 'At scale')"
                )
            role_arn = f"arn:aws:iam::{account_id}:role/YOUR-BATCH-OPERATIONS-ROLE"
        spec = JobSpec(
            account_id=account_id,
            region=region,
            function_arn=function_arn,
            role_arn=role_arn,
            manifest_arn=f"arn:aws:s3:::{target.bucket}/{manifest_key}",
            manifest_etag=etag,
            report_bucket_arn=f"arn:aws:s3:::{report_bucket}",
            report_prefix=report_prefix.rstrip("/") or "reports",
            description=f"image-pipeline backfill --{mode} {target.url} ({manifest.count} objects)",
            mode=mode,
        )
        request = job_request(spec)
        print(f"\nmanifest: s3://{target.bucket}/{manifest_key} ({manifest.count} objects, ETag {etag})")
        if args.print_only:
            print("\n" + cli_command(request, region))
            return 0
        s3control = session.client("s3control", region_name=region)
        job_id = s3control.create_job(**request)["JobId"]
        print(
            f"\nS3 Batch Operations job {job_id} created (report of failed tasks: "
            f"s3://{report_bucket}/{spec.report_prefix}/)\n  console: {console_link(job_id, region)}\n"
            f"  status:  aws s3control describe-job --region {region} --account-id {account_id} --job-id {job_id}"
        )
        return 0
    finally:
        manifest.path.unlink(missing_ok=True)


def _account_id(session: Any, region: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return session.client("sts", region_name=region).get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as exc:
        raise BackfillError(f"cannot find the AWS account id (pass --account-id): {exc}") from None


def _stack_output(session: Any, region: str, stack: str, name: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        stacks = session.client("cloudformation", region_name=region).describe_stacks(StackName=stack)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        return outputs[name]
    except (BotoCoreError, ClientError, IndexError, KeyError) as exc:
        raise BackfillError(f"no --function given and no {name} output in stack {stack!r}: {exc}") from None
