"""ProcessingPool: image work in worker threads, at most `limit` at once in a process, whichever
event loop asks; beyond the bound a bounded wait, then `Busy`. Driven by events, not by timing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from image_pipeline.errors import Busy
from image_pipeline.pool import ProcessingPool


class Work:
    """A job that records how many run at once and waits for the test to let it finish."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.peak = self.finished = 0
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads: set[str] = set()

    def __call__(self, value: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
        self.started.release()
        try:
            assert self.gate.wait(30), "the test never opened the gate"
            return value * 2
        finally:
            with self.lock:
                self.running -= 1
                self.finished += 1


async def _until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def _started(work: Work, count: int) -> None:
    for _ in range(count):
        assert work.started.acquire(timeout=10)


def test_at_most_limit_at_once_each_in_a_worker_thread():
    pool, work = ProcessingPool(2), Work()

    async def main():
        tasks = [asyncio.create_task(pool.run(work, i)) for i in range(5)]
        await asyncio.to_thread(_started, work, 2)
        assert pool.in_flight == 2 and work.running == 2
        work.gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert work.peak == 2 and work.finished == 5
    assert threading.current_thread().name not in work.threads  # never on the loop's thread
    assert pool.in_flight == 0


def test_beyond_the_bound_a_bounded_wait_then_busy_with_a_retry_after():
    pool, work = ProcessingPool(1, wait_s=0.05), Work()

    async def main():
        first = asyncio.create_task(pool.run(work, 1))
        await asyncio.to_thread(_started, work, 1)
        with pytest.raises(Busy) as refused:
            await pool.run(work, 2)
        assert refused.value.code == "busy" and not refused.value.permanent
        assert refused.value.retry_after_s >= 1
        with pytest.raises(Busy):
            async with pool.reserve(wait_s=0):
                pass
        work.gate.set()
        assert await first == 2
        assert await pool.run(work, 3) == 6  # the slot came back

    asyncio.run(main())
    assert work.finished == 2  # the refused one never ran


def test_a_waiter_gets_the_slot_when_it_frees_within_its_wait():
    pool, work = ProcessingPool(1, wait_s=30), Work()

    async def main():
        first = asyncio.create_task(pool.run(work, 1))
        await asyncio.to_thread(_started, work, 1)
        second = asyncio.create_task(pool.run(work, 2))
        await asyncio.sleep(0.05)
        assert not second.done()  # waiting, not refused
        work.gate.set()
        return await first, await second

    assert asyncio.run(main()) == (2, 4)
    assert work.peak == 1


def test_a_cancelled_caller_keeps_the_slot_until_its_thread_ends():
    """A record cut off by its time bound: the thread cannot be stopped, so its memory stays in
    use; the slot is not given to anyone else before the thread is done."""
    pool, work = ProcessingPool(1, wait_s=0), Work()

    async def main():
        cut = asyncio.create_task(pool.run(work, 1))
        await asyncio.to_thread(_started, work, 1)
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        assert pool.in_flight == 1
        with pytest.raises(Busy):
            await pool.run(work, 2)
        work.gate.set()
        await _until(lambda: pool.in_flight == 0)
        assert await pool.run(work, 3) == 6

    asyncio.run(main())


def test_image_work_inside_a_reservation_uses_its_slot():
    """The API reserves before it stores an upload; the processing inside takes no second slot."""
    pool, work = ProcessingPool(1, wait_s=0), Work()
    work.gate.set()

    async def main():
        async with pool.reserve():
            assert pool.in_flight == 1
            assert await pool.run(work, 1) == 2
            async with pool.reserve():  # re-entrant
                assert await pool.run(work, 2) == 4
            assert pool.in_flight == 1
        assert pool.in_flight == 0

    asyncio.run(main())


def test_two_event_loops_share_one_bound():
    """The API's loop and a worker's or a Runtime's loop in another thread count against one limit."""
    pool, work = ProcessingPool(1), Work()
    results: list[int] = []

    def other_loop() -> None:
        results.append(asyncio.run(pool.run(work, 1)))

    async def main():
        thread = threading.Thread(target=other_loop)
        thread.start()
        await asyncio.to_thread(_started, work, 1)
        mine = asyncio.create_task(pool.run(work, 2))  # waits for the other loop's slot
        await asyncio.sleep(0.05)
        assert not mine.done() and work.running == 1
        work.gate.set()
        results.append(await mine)
        await asyncio.to_thread(thread.join, 10)

    asyncio.run(main())
    assert sorted(results) == [2, 4] and work.peak == 1


def test_the_default_limit_is_the_cpus_this_process_may_use():
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert ProcessingPool().limit == (os.process_cpu_count() if hasattr(os, "process_cpu_count") else expected)
    assert ProcessingPool(3).limit == 3


def test_no_thread_is_started_before_the_first_image():
    before = threading.active_count()
    pool = ProcessingPool(4)
    assert threading.active_count() == before and pool._slots._executor is None


def test_the_process_has_one_set_of_slots_each_caller_with_its_own_wait():
    """The API (bounded wait) and the local event source's Runtime (no bound) in one `serve`."""
    api = ProcessingPool.of_process(1, wait_s=0)
    runtime = ProcessingPool.of_process(1)
    work = Work()

    async def main():
        held = asyncio.create_task(runtime.run(work, 1))
        await asyncio.to_thread(_started, work, 1)
        assert api.in_flight == 1
        with pytest.raises(Busy):
            await api.run(work, 2)
        work.gate.set()
        await held
        await _until(lambda: api.in_flight == 0)

    asyncio.run(main())
    assert ProcessingPool(1)._slots is not api._slots  # a pool of its own when asked for
    assert api.with_wait(None)._slots is api._slots
