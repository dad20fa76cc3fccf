"""Load: 2,000 concurrent requests against a pool of 10 + 0.

Zero errors, every row written exactly once, and no more OS threads than the
pool's capacity + 2 (the main thread and async_orm's canceller thread) at any
moment.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

import async_orm
from async_orm import _worker
from tests.reliability._support import Row, rows_per_request
from tests.reliability.conftest import EngineFactory

pytestmark = pytest.mark.reliability

REQUESTS = 2000
POOL_SIZE = 10


def os_thread_count() -> int:
    """Threads of this process as the OS sees them (Python's count elsewhere)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class ThreadWatcher:
    """Samples the OS thread count and the worker pool from a task on the loop,
    once per loop iteration, until stopped."""

    def __init__(self) -> None:
        self.peak_threads = 0
        self.peak_workers = 0
        self.samples = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.peak_threads = max(self.peak_threads, os_thread_count())
            self.peak_workers = max(self.peak_workers, _worker.pool.stats()["alive"])
            self.samples += 1
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()


def threads_not_ours() -> int:
    """Threads other than the main thread and async_orm's own (pytest plugins,
    threads the driver may start, ...): they are not counted against the bound."""
    python_threads = threading.enumerate()
    foreign = [
        t
        for t in python_threads
        if t is not threading.main_thread() and not t.name.startswith("async_orm")
    ]
    return len(foreign) + max(0, os_thread_count() - len(python_threads))


async def test_2000_concurrent_requests_write_every_row_once_within_bounded_threads(
    make_engine: EngineFactory,
) -> None:
    # Queued requests wait for a worker slot on the loop; 2,000 of them behind 10
    # slots on a shared 2-core machine may take longer than the default 30 s.
    engine = await make_engine(pool_size=POOL_SIZE, max_overflow=0, worker_timeout=300)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    capacity = POOL_SIZE
    _worker.pool.shrink()  # idle workers of earlier tests must not count
    foreign = threads_not_ours()

    async def request(i: int) -> None:
        async with maker() as session:
            session.add(Row(request=i))
            await session.commit()

    watcher = ThreadWatcher()
    watch = asyncio.create_task(watcher.run())
    try:
        outcomes = await asyncio.gather(
            *(request(i) for i in range(REQUESTS)), return_exceptions=True
        )
    finally:
        watcher.stop()
        await watch

    errors = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert errors == [], f"{len(errors)} of {REQUESTS} requests failed, first: {errors[:3]!r}"

    rows = await rows_per_request(engine)
    missing = [i for i in range(REQUESTS) if i not in rows]
    duplicated = {i: parts for i, parts in rows.items() if len(parts) != 1}
    assert missing == [], f"{len(missing)} requests' rows are missing: {missing[:10]}"
    assert duplicated == {}, f"rows written more than once: {dict(list(duplicated.items())[:10])}"
    assert set(rows) == set(range(REQUESTS))

    assert watcher.samples > 1
    assert watcher.peak_workers <= capacity, (
        f"{watcher.peak_workers} worker threads alive for a pool of {capacity}"
    )
    allowed = capacity + 2 + foreign
    assert watcher.peak_threads <= allowed, (
        f"peak of {watcher.peak_threads} OS threads; allowed: pool capacity {capacity} + 2 "
        f"(+ {foreign} threads not started by async_orm)"
    )
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _worker.pool.stats()["busy"] == 0


LOOPS = 4
REQUESTS_PER_LOOP = 250


async def test_requests_from_several_event_loops_share_one_engine(
    make_engine: EngineFactory,
) -> None:
    """The same load from four event loops in four threads at once (as under
    asgiref or several ``asyncio.run()`` threads): the worker slots are shared
    across loops, so zero errors, every row once, and the same thread bound
    (plus the four loop threads)."""
    engine = await make_engine(pool_size=POOL_SIZE, max_overflow=0, worker_timeout=300)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    _worker.pool.shrink()
    foreign = threads_not_ours()
    start = threading.Barrier(LOOPS)

    async def request(i: int) -> None:
        async with maker() as session:
            session.add(Row(request=i))
            await session.commit()

    async def one_loop(n: int) -> list[BaseException]:
        first = n * REQUESTS_PER_LOOP
        outcomes = await asyncio.gather(
            *(request(first + i) for i in range(REQUESTS_PER_LOOP)), return_exceptions=True
        )
        return [o for o in outcomes if isinstance(o, BaseException)]

    def run_loop(n: int) -> list[BaseException]:
        start.wait(timeout=30)
        return asyncio.run(one_loop(n))

    watcher = ThreadWatcher()
    watch = asyncio.create_task(watcher.run())
    try:
        results = await asyncio.gather(*(asyncio.to_thread(run_loop, n) for n in range(LOOPS)))
    finally:
        watcher.stop()
        await watch

    errors = [e for errors in results for e in errors]
    assert errors == [], f"{len(errors)} requests failed, first: {errors[:3]!r}"
    rows = await rows_per_request(engine)
    total = LOOPS * REQUESTS_PER_LOOP
    assert set(rows) == set(range(total))
    assert all(parts == [0] for parts in rows.values()), "a row was written twice"
    assert watcher.peak_workers <= POOL_SIZE
    allowed = POOL_SIZE + 2 + LOOPS + foreign
    assert watcher.peak_threads <= allowed, (
        f"peak of {watcher.peak_threads} OS threads; allowed: pool capacity {POOL_SIZE} + 2 "
        f"+ {LOOPS} loop threads (+ {foreign} threads not started by async_orm)"
    )
    assert engine._limiter.in_use == 0


@pytest.fixture
def churning_workers() -> Iterator[None]:
    """Idle workers retire after a millisecond: under load, threads retire and
    are replaced all the time, racing with check-outs."""
    previous = _worker.pool.idle_timeout
    _worker.pool.configure(idle_timeout=0.001)
    yield
    _worker.pool.configure(idle_timeout=previous)


async def test_load_while_idle_workers_retire_and_are_replaced(
    make_engine: EngineFactory, churning_workers: None
) -> None:
    """Requests in waves: between waves the idle workers retire, and the next
    wave starts new ones, while the last sessions of a wave check theirs in."""
    engine = await make_engine(pool_size=POOL_SIZE, max_overflow=0, worker_timeout=300)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    names: set[str] = set()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(*args: Any) -> None:
        names.add(threading.current_thread().name)

    async def request(i: int) -> None:
        async with maker() as session:
            session.add(Row(request=i))
            await session.commit()

    waves, per_wave = 20, 50
    errors: list[BaseException] = []
    for wave in range(waves):
        outcomes = await asyncio.gather(
            *(request(wave * per_wave + i) for i in range(per_wave)), return_exceptions=True
        )
        errors += [o for o in outcomes if isinstance(o, BaseException)]
        await asyncio.sleep(0.005)  # a pause longer than the idle timeout: workers retire
    assert errors == [], f"{len(errors)} requests failed, first: {errors[:3]!r}"
    assert len(names) > POOL_SIZE, "no worker retired: the test proves nothing"
    rows = await rows_per_request(engine)
    assert set(rows) == set(range(waves * per_wave))
    assert all(parts == [0] for parts in rows.values())
    assert _worker.pool.stats()["busy"] == 0
