"""The thread boundary itself (async_orm._worker), without a database."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from async_orm import _worker
from async_orm._worker import END, ROLLBACK, STATEMENT, USER
from async_orm.exc import CrossLoopError, ReentrantCallError, WorkerSlotTimeout

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@pytest.fixture
def limiter() -> _worker.Limiter:
    return _worker.Limiter(4, 5.0, "test limiter")


@pytest.fixture
def runner(limiter: _worker.Limiter) -> Iterator[_worker.Runner]:
    r = _worker.Runner(limiter, "TestOwner")
    yield r
    r._release()


async def test_worker_thread_is_a_named_daemon(runner: _worker.Runner) -> None:
    thread = await runner.run(STATEMENT, threading.current_thread)
    assert thread is not threading.current_thread()
    assert thread.daemon
    assert thread.name.startswith("async_orm-worker-")


async def test_calls_run_in_submission_order_on_one_thread(runner: _worker.Runner) -> None:
    seen: list[tuple[int, int]] = []

    def record(n: int) -> int:
        seen.append((n, threading.get_ident()))
        return n

    results = await asyncio.gather(*(runner.run(STATEMENT, record, n) for n in range(50)))
    assert results == list(range(50))
    assert [n for n, _ in seen] == list(range(50))
    assert len({ident for _, ident in seen}) == 1


async def test_context_variables_are_copied_into_each_call(runner: _worker.Runner) -> None:
    request_id.set("req-42")
    assert await runner.run(STATEMENT, request_id.get) == "req-42"
    # a value set inside a call stays inside that call
    await runner.run(STATEMENT, request_id.set, "changed-on-worker")
    assert request_id.get() == "req-42"
    assert await runner.run(STATEMENT, request_id.get) == "req-42"


async def test_exceptions_keep_their_type_and_traceback(runner: _worker.Runner) -> None:
    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        await runner.run(STATEMENT, fail)
    assert any(entry.name == "fail" for entry in info.traceback)


async def test_stop_iteration_from_a_call_is_reported_as_runtime_error(
    runner: _worker.Runner,
) -> None:
    def stop() -> None:
        raise StopIteration

    with pytest.raises(RuntimeError, match="StopIteration"):
        await runner.run(STATEMENT, stop)


async def test_call_from_the_worker_thread_runs_inline(runner: _worker.Runner) -> None:
    def nested() -> tuple[int, int]:
        # a coroutine of the same runner driven on the worker thread itself
        inner = asyncio.run(runner.run(STATEMENT, threading.get_ident))
        return threading.get_ident(), inner

    outer, inner = await runner.run(STATEMENT, nested)
    assert outer == inner


async def test_own_async_api_inside_run_sync_raises_instead_of_deadlocking(
    runner: _worker.Runner,
) -> None:
    def nested() -> None:
        # what sync code would write to reach async code: asgiref runs the
        # coroutine on a loop in another thread, with this context copied
        async def again() -> None:
            await runner.run(STATEMENT, lambda: None)

        async_to_sync(again)()

    with pytest.raises(ReentrantCallError, match="inside its run_sync"):
        await runner.run(USER, nested)


async def test_workers_are_reused_after_release(limiter: _worker.Limiter) -> None:
    first = _worker.Runner(limiter)
    ident = await first.run(STATEMENT, threading.get_ident)
    await first.run(END, _nothing)
    second = _worker.Runner(limiter)
    try:
        assert await second.run(STATEMENT, threading.get_ident) == ident
    finally:
        await second.run(END, _nothing)


def test_idle_workers_retire_after_the_idle_timeout() -> None:
    pool = _worker.WorkerPool(max_idle=4, idle_timeout=0.05)
    worker = pool.checkout()
    pool.checkin(worker)
    worker.thread.join(timeout=5)
    assert not worker.thread.is_alive()
    assert pool.stats() == {"alive": 0, "idle": 0, "busy": 0}


def test_idle_pool_keeps_at_most_max_idle_workers() -> None:
    pool = _worker.WorkerPool(max_idle=2, idle_timeout=60)
    workers = [pool.checkout() for _ in range(4)]
    for worker in workers:
        pool.checkin(worker)
    assert pool.stats() == {"alive": 2, "idle": 2, "busy": 0}
    for worker in workers[2:]:
        worker.thread.join(timeout=5)
        assert not worker.thread.is_alive()
    pool.shrink()


async def test_result_for_a_closed_loop_is_dropped_without_error(limiter: _worker.Limiter) -> None:
    runner = _worker.Runner(limiter)
    started = threading.Event()
    release = threading.Event()

    def block() -> str:
        started.set()
        release.wait(10)
        return "late"

    def other_loop() -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(runner.run(STATEMENT, block))
        loop.run_until_complete(asyncio.sleep(0))
        started.wait(10)
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.close()

    # the awaiting loop goes away while the call still runs
    first_loop_thread = threading.Thread(target=other_loop)
    first_loop_thread.start()
    started.wait(10)
    release.set()
    first_loop_thread.join(10)
    # the worker survived and serves the next call (after the rollback a call
    # cancelled while running requires)
    await runner.run(ROLLBACK, lambda: None)
    assert await runner.run(STATEMENT, lambda: "next") == "next"
    await runner.run(END, _nothing)


def _nothing() -> None:
    return None


async def _hold(limiter: _worker.Limiter) -> _worker.Runner:
    """An owner holding one slot of ``limiter`` (its first call took it)."""
    owner = _worker.Runner(limiter, "TestOwner")
    await owner.run(STATEMENT, _nothing)
    return owner


async def test_slots_bound_concurrent_owners_and_waiters_get_them_in_order() -> None:
    limiter = _worker.Limiter(2, 5.0, "two slots")
    holders = [await _hold(limiter), await _hold(limiter)]
    order: list[int] = []

    async def wait(n: int) -> _worker.Runner:
        owner = await _hold(limiter)
        order.append(n)
        return owner

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert order == []
    await holders[0].run(END, _nothing)
    third = await waiters[0]
    await holders[1].run(END, _nothing)
    fourth = await waiters[1]
    await third.run(END, _nothing)
    fifth = await waiters[2]
    assert order == [0, 1, 2]
    for owner in (fourth, fifth):
        await owner.run(END, _nothing)
    assert limiter.in_use == 0


async def test_slot_wait_times_out_with_a_clear_error() -> None:
    limiter = _worker.Limiter(1, 0.05, "engine 'x' (QueuePool, capacity 1)")
    holder = await _hold(limiter)
    with pytest.raises(WorkerSlotTimeout) as info:
        await _hold(limiter)
    message = str(info.value)
    assert "capacity" in message and "max_overflow" in message and "worker_timeout" in message
    await holder.run(END, _nothing)
    assert limiter.in_use == 0


async def test_cancelled_slot_waiter_does_not_lose_the_slot() -> None:
    limiter = _worker.Limiter(1, 5.0, "one slot")
    holder = await _hold(limiter)
    waiter = asyncio.ensure_future(_hold(limiter))
    await asyncio.sleep(0)
    waiter.cancel()
    await holder.run(END, _nothing)  # the grant races the cancellation
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert limiter.in_use == 0
    again = await asyncio.wait_for(_hold(limiter), 1)
    await again.run(END, _nothing)


async def test_one_runner_used_from_two_loops_at_once_is_refused(runner: _worker.Runner) -> None:
    started = threading.Event()
    release = threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    busy = asyncio.ensure_future(runner.run(STATEMENT, block))
    await asyncio.to_thread(started.wait, 10)
    errors: list[BaseException] = []

    def from_other_loop() -> None:
        try:
            asyncio.run(runner.run(STATEMENT, lambda: None))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=from_other_loop)
    t.start()
    t.join(10)
    release.set()
    await busy
    assert len(errors) == 1 and isinstance(errors[0], CrossLoopError)
    assert "from another event loop" in str(errors[0])
