"""Image work off the event loop, a bounded number of images at a time.

Decoding, resampling and encoding run in Pillow's C code, which releases the GIL, so a worker
thread lets the loop keep answering (status polls, health checks, other uploads' S3 calls) while
an image is processed, and lets two images use two cores. A process has one set of image slots
(`PROCESS_CONCURRENCY`, default one per CPU): each image in flight holds its decoded pixels, so
the bound is also the memory bound. Everything in the process that processes images takes its
slots: the API's uploads, the `--storage` worker, the local event source's handler, on-demand
sizes. Beyond the bound a caller waits at most its `wait_s` (None: as long as it takes) and then
gets `Busy`, which the API answers with 503 and `Retry-After`.

A slot is held from the moment it is granted until the work in its thread has finished, even when
the awaiting coroutine is cancelled (a Lambda record cut off by its time bound): the thread cannot
be stopped, so its memory is still in use, and its result is dropped (the coroutine that would
have written the outputs is gone, so nothing is written).

`reserve()` takes a slot for a whole block (the API takes one before it reads an upload's body);
image work inside it runs in that slot instead of taking another.

Thread-safe and bound to no event loop (the API's loop and a `Runtime`'s loop in another thread
share the slots); the threads start with the first image, never at import.
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

_OWN_WAIT: Any = object()  # reserve(): the pool's own wait
_held: contextvars.ContextVar[tuple[_Slots, _Slot] | None] = contextvars.ContextVar("image_slot", default=None)
_process_slots: dict[int, _Slots] = {}
_process_lock = threading.Lock()


def return_freed_memory() -> None:
    """Have glibc serve every allocation of 1 MiB or more (image buffers, uploads) with its own
    mmap, returned to the system when freed. By default glibc raises that threshold as big blocks
    are freed and then keeps them in its heaps: a long-running process (the API) holds on to its
    largest images' memory, so its RSS follows how many images it has seen, not how many are in
    flight. Measured (bench/concurrency.py): six 60 MP uploads one after another kept 440 MB
    resident afterwards (88 MB with this); the CPU time per image did not change. Not done when
    MALLOC_MMAP_THRESHOLD_ is set (the operator chose), nor where the C library is not glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def cpu_count() -> int:
    """The CPUs this process may use (its CPU affinity where the platform tells it)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class ProcessingPool:
    """Image slots and the wait for one: `run(fn, *args)` runs `fn` in a worker thread in a slot.

    `ProcessingPool.of_process(limit, wait_s=…)`: the process's own slots (one set per limit; a
    process normally has one PROCESS_CONCURRENCY), what the API and the `Runtime` use.
    `ProcessingPool(limit, wait_s=…)`: slots of its own (tests, tools).
    `wait_s`: how long a caller waits for a free slot before `Busy`; None: without bound (the
    Lambda handler, `invoke`, the backfill: one record at a time, nobody else to answer)."""

    def __init__(self, limit: int | None = None, *, wait_s: float | None = None, _slots: _Slots | None = None) -> None:
        self._slots = _slots or _Slots(max(1, limit or cpu_count()))
        self.limit = self._slots.limit
        self.wait_s = wait_s

    @classmethod
    def of_process(cls, limit: int | None = None, *, wait_s: float | None = None) -> ProcessingPool:
        limit = max(1, limit or cpu_count())
        with _process_lock:
            slots = _process_slots.setdefault(limit, _Slots(limit))
        return cls(wait_s=wait_s, _slots=slots)

    def with_wait(self, wait_s: float | None) -> ProcessingPool:
        """The same slots, another wait."""
        return ProcessingPool(wait_s=wait_s, _slots=self._slots)

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    def retry_after_s(self) -> int:
        return self._slots.retry_after_s()

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """`fn(*args)` in a worker thread under the bound; the slot of an enclosing `reserve()`
        is used when there is one. Raises `Busy` when no slot came free within `wait_s`."""
        held = _held.get()
        if held is not None and held[0] is self._slots:
            return await self._slots.in_thread(held[1], fn, args)
        async with self.reserve():
            held = _held.get()
            assert held is not None  # set by reserve()
            return await self._slots.in_thread(held[1], fn, args)

    @contextlib.asynccontextmanager
    async def reserve(self, wait_s: float | None = _OWN_WAIT) -> AsyncIterator[None]:
        """Hold one slot for the block (re-entrant); `wait_s` overrides the pool's wait."""
        held = _held.get()
        if held is not None and held[0] is self._slots:
            yield
            return
        slot = await self._slots.acquire(self.wait_s if wait_s is _OWN_WAIT else wait_s)
        token = _held.set((self._slots, slot))
        try:
            yield
        finally:
            _held.reset(token)
            slot.leave()


class _Slot:
    """One permit; returned when its holder and every thread working in it are done."""

    __slots__ = ("_slots", "_users")

    def __init__(self, slots: _Slots) -> None:
        self._slots = slots
        self._users = 1

    def join(self) -> None:
        with self._slots.lock:
            self._users += 1

    def leave(self) -> None:
        with self._slots.lock:
            self._users -= 1
            if self._users:
                return
        self._slots.release()


class _Slots:
    """`limit` permits with a FIFO of waiters, each on its own event loop; the worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self._free = limit
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._mean_s = 1.0  # recent time one image takes: the Retry-After estimate

    @property
    def in_flight(self) -> int:
        return self.limit - self._free

    def retry_after_s(self) -> int:
        """Seconds a refused caller should wait: about how often a slot comes free (an image's
        recent time over the slots), at least 1."""
        return max(1, math.ceil(self._mean_s / self.limit))

    async def in_thread(self, slot: _Slot, fn: Callable[..., T], args: tuple) -> T:
        slot.join()  # held until the thread ends, even if the awaiting coroutine is cancelled
        started = time.perf_counter()

        def done(_: Future) -> None:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - started)
            slot.leave()

        try:
            with self.lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.limit, thread_name_prefix="image-pipeline-image")
            future = self._executor.submit(fn, *args)
        except BaseException:
            slot.leave()
            raise
        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    async def acquire(self, wait_s: float | None) -> _Slot:
        loop = asyncio.get_running_loop()
        with self.lock:
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
            with self.lock:
                granted = waiter not in self._waiters
                if not granted:
                    self._waiters.remove(waiter)
            if granted:  # the permit arrived as we gave up: pass it on
                self.release()
            if isinstance(exc, TimeoutError):
                raise self._busy() from None
            raise
        return _Slot(self)

    def release(self) -> None:
        """One permit back: to the first live waiter (woken on its own loop), else to the free count."""
        while True:
            with self.lock:
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
