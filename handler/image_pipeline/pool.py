"""Image work off the event loop, a bounded number of images at a time.

Decoding, resampling and encoding run in Pillow's C code, which releases the GIL, so a worker
thread lets the loop keep answering (status polls, health checks, other uploads' S3 calls) while
an image is processed, and lets two images use two cores. `ProcessingPool` bounds how many images
are in flight in one process (`PROCESS_CONCURRENCY`): each holds its decoded pixels, so the bound
is also the memory bound. Beyond it a caller waits at most `wait_s` (None: as long as it takes)
and then gets `Busy`, which the API answers with 503 and `Retry-After`.

A slot is held from the moment it is granted until the work in its thread has finished, even when
the awaiting coroutine is cancelled (a Lambda record cut off by its time bound): the thread cannot
be stopped, so its memory is still in use, and its result is dropped (the coroutine that would
have written the outputs is gone, so nothing is written).

`reserve()` takes a slot for a whole request (the API takes one before it stores an upload, so a
refused upload stores nothing); image work inside it runs in that slot instead of taking another.

The pool is thread-safe and bound to no event loop (the API's loop, a `Runtime`'s loop and a
worker's loop may share one); its thread pool is created on first use, not at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import Busy

T = TypeVar("T")

_POOL_WAIT: Any = object()  # reserve(): the pool's own wait
_held: contextvars.ContextVar[tuple[ProcessingPool, _Slot] | None] = contextvars.ContextVar(
    "image_pipeline_slot", default=None
)


def cpu_count() -> int:
    """The CPUs this process may use (its CPU affinity where the platform tells it)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class _Slot:
    """One permit; returned to the pool when its holder and every thread working in it are done."""

    __slots__ = ("_pool", "_users")

    def __init__(self, pool: ProcessingPool) -> None:
        self._pool = pool
        self._users = 1

    def join(self) -> None:
        with self._pool._lock:
            self._users += 1

    def leave(self) -> None:
        with self._pool._lock:
            self._users -= 1
            if self._users:
                return
        self._pool._release()


class ProcessingPool:
    """At most `limit` images in flight in this process, each processed in a worker thread.

    `wait_s`: how long a caller waits for a free slot before `Busy` (None: without bound, as the
    Lambda handler, `invoke` and the backfill do: one record at a time, nobody else to serve)."""

    def __init__(self, limit: int | None = None, *, wait_s: float | None = None) -> None:
        self.limit = max(1, limit or cpu_count())
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._free = self.limit
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._mean_s = 1.0  # recent time one image takes: the Retry-After estimate

    @property
    def in_flight(self) -> int:
        return self.limit - self._free

    def retry_after_s(self) -> int:
        """Seconds a refused caller should wait: about one image's time, at least 1."""
        return max(1, math.ceil(self._mean_s))

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """`fn(*args)` in a worker thread under the bound; the slot of an enclosing `reserve()`
        is used when there is one. Raises `Busy` when no slot came free within `wait_s`."""
        held = _held.get()
        if held is not None and held[0] is self:
            return await self._in_thread(held[1], fn, args)
        async with self.reserve():
            return await self._in_thread(_held.get()[1], fn, args)  # type: ignore[index]

    @contextlib.asynccontextmanager
    async def reserve(self, wait_s: float | None = _POOL_WAIT) -> AsyncIterator[None]:
        """Hold one slot for the block (re-entrant); `wait_s` overrides the pool's wait."""
        held = _held.get()
        if held is not None and held[0] is self:
            yield
            return
        slot = await self._acquire(self.wait_s if wait_s is _POOL_WAIT else wait_s)
        token = _held.set((self, slot))
        try:
            yield
        finally:
            _held.reset(token)
            slot.leave()

    def shutdown(self) -> None:
        """Stop the threads once the work they run has finished (without waiting for it here)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, slot: _Slot, fn: Callable[..., T], args: tuple) -> T:
        slot.join()  # held until the thread ends, even if the awaiting coroutine is cancelled
        started = time.perf_counter()

        def done(_: Future) -> None:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - started)
            slot.leave()

        try:
            future = self._threads().submit(contextvars.copy_context().run, fn, *args)
        except BaseException:
            slot.leave()
            raise
        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.limit, thread_name_prefix="image-pipeline-image")
            return self._executor

    async def _acquire(self, wait_s: float | None) -> _Slot:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return _Slot(self)
            if wait_s is not None and wait_s <= 0:
                raise self._busy()
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter[1]
        except BaseException as exc:
            with self._lock:
                granted = waiter not in self._waiters
                if not granted:
                    self._waiters.remove(waiter)
            if granted:  # the permit arrived as we gave up: pass it on
                self._release()
            if isinstance(exc, TimeoutError):
                raise self._busy() from None
            raise
        return _Slot(self)

    def _release(self) -> None:
        """One permit back: to the first live waiter (on its own loop), else to the free count."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._free += 1
                    return
                loop, future = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(_grant, future)
                return
            except RuntimeError:  # that waiter's loop is closed: it is gone, try the next
                continue

    def _busy(self) -> Busy:
        return Busy(
            f"{self.limit} image(s) already in flight (PROCESS_CONCURRENCY); try again shortly",
            retry_after_s=self.retry_after_s(),
        )


def _grant(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
    # A future cancelled meanwhile: its waiter sees it is no longer queued and passes the permit on.
