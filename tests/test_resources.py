"""Invariants 6 and 7: nothing leaks; threads are bounded, with async back-pressure."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any

import pytest
from sqlalchemy import event, text, update

import async_orm
from async_orm import _worker
from async_orm.exc import WorkerSlotTimeout
from tests.conftest import PG_URL, require_postgres
from tests.models import User


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def _wait_until(predicate: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_ten_thousand_sessions_leave_nothing_behind(
    engine: async_orm.AsyncEngine,
) -> None:
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    async with maker.begin() as session:
        session.add(User(id=1, name="one"))
    _worker.pool.shrink()
    close_threads: set[str] = set()

    def record_close(*args: Any) -> None:
        close_threads.add(threading.current_thread().name)

    event.listen(engine.sync_engine.pool, "checkin", record_close)

    async def used(n: int) -> None:
        kind = n % 3
        if kind == 0:
            async with maker() as session:
                await session.get(User, 1)
        elif kind == 1:
            session = maker()
            await session.get(User, 1)
            await session.close()
        else:
            session = maker()
            await session.get(User, 1)
            del session  # dropped unclosed: ResourceWarning, closed on its worker

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, 10_000, 500):
            await asyncio.gather(*(used(n) for n in range(start, start + 500)))
        gc.collect()
        await _wait_until(
            lambda: _worker.pool.stats()["busy"] == 0 and engine.pool.checkedout() == 0,  # type: ignore[attr-defined]
            "every worker and connection to come back",
        )
    event.remove(engine.sync_engine.pool, "checkin", record_close)
    resource_warnings = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(resource_warnings) == 10_000 // 3  # one per dropped session (n % 3 == 2)
    assert "garbage-collected without being closed" in str(resource_warnings[0].message)
    stats = _worker.pool.stats()
    assert stats["busy"] == 0
    assert stats["alive"] == stats["idle"] <= _worker.pool.max_idle
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # connections were returned on worker threads, never on the event loop thread
    assert close_threads and all(n.startswith("async_orm-worker-") for n in close_threads)


async def test_a_thousand_tasks_against_a_pool_of_ten_all_succeed_within_capacity(
    db_url: tuple[str, dict[str, Any]],
) -> None:
    url, kwargs = db_url
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}  # writers queue on SQLite's one lock
    engine = async_orm.create_async_engine(
        url, pool_size=10, max_overflow=0, pool_timeout=120, **kwargs
    )  # the slot wait is the pool's pool_timeout: the thousand queue on the loop
    if engine.dialect.name == "sqlite":
        # read-then-write transactions on SQLite need BEGIN IMMEDIATE (SQLAlchemy's
        # pysqlite recipe), or concurrent upgrades fail with "database is locked"
        @event.listens_for(engine.sync_engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    async with engine.begin() as conn:
        await conn.run_sync(User.metadata.create_all)
        await conn.execute(User.__table__.insert(), [{"id": i, "name": "n"} for i in range(1, 11)])
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    _worker.pool.shrink()
    baseline = _os_threads()
    peak = baseline
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _os_threads())
            await asyncio.sleep(0)

    async def request(n: int) -> None:
        async with maker() as session:
            user = await session.get(User, n % 10 + 1)
            assert user is not None
            await session.execute(update(User).where(User.id == user.id).values(name=f"r{n}"))
            await session.commit()

    watcher = asyncio.ensure_future(watch())
    results = await asyncio.gather(*(request(n) for n in range(1000)), return_exceptions=True)
    done.set()
    await watcher
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    capacity = 10
    assert peak - baseline <= capacity + 1, (peak, baseline)  # workers + the canceller at most
    assert _worker.pool.stats()["alive"] <= capacity
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await engine.dispose()


async def test_no_free_slot_within_the_timeout_raises_a_clear_error(
    db_url: tuple[str, dict[str, Any]],
) -> None:
    url, kwargs = db_url
    engine = async_orm.create_async_engine(
        url, pool_size=1, max_overflow=0, worker_timeout=0.2, **kwargs
    )
    maker = async_orm.async_sessionmaker(engine)
    async with maker() as holder:
        await holder.execute(text("select 1"))
        async with maker() as waiting:
            with pytest.raises(WorkerSlotTimeout) as info:
                await waiting.execute(text("select 2"))
    message = str(info.value)
    assert "capacity 1" in message and "max_overflow" in message and "max_workers" in message
    await engine.dispose()


async def test_unbounded_pools_get_a_configurable_cap(tmp_path: Any) -> None:
    from sqlalchemy.pool import NullPool

    engine = async_orm.create_async_engine(
        f"sqlite:///{tmp_path / 'n.db'}", poolclass=NullPool, max_workers=3
    )
    assert engine._limiter.capacity == 3
    other = async_orm.create_async_engine(f"sqlite:///{tmp_path / 'm.db'}", poolclass=NullPool)
    assert other._limiter.capacity == _worker.default_capacity()
    await engine.dispose()
    await other.dispose()


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading
    from sqlalchemy import text
    import async_orm

    URL, SLOW = sys.argv[1], sys.argv[2]
    started = threading.Event()

    async def main():
        engine = async_orm.create_async_engine(URL)
        maker = async_orm.async_sessionmaker(engine)
        idle = maker()
        await idle.execute(text("select 1"))          # an open session, never closed
        busy = maker()
        await busy.run_sync(lambda s: None)
        task = asyncio.ensure_future(busy.execute(text(SLOW)))
        await asyncio.sleep(0.3)                      # the statement is running
        print("exiting", flush=True)
        sys.exit(0) if MODE == "exit" else None       # leave with everything open

    MODE = sys.argv[3]
    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["return", "exit"])
def test_process_with_open_sessions_and_a_running_statement_exits_promptly(
    backend: str, tmp_path: Any, mode: str
) -> None:
    if backend == "postgresql":
        require_postgres()
        url, slow = PG_URL, "select pg_sleep(30)"
    else:
        url = f"sqlite:///{tmp_path / 'exit.db'}"
        slow = (
            "with recursive c(x) as (select 1 union all select x + 1 from c) "
            "select count(*) from (select x from c limit 2000000000)"
        )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCRIPT, url, slow, mode],
        capture_output=True,
        text=True,
        timeout=20,
    )
    elapsed = time.monotonic() - start
    assert "exiting" in out.stdout, out.stderr
    assert out.returncode == 0, out.stderr
    assert elapsed < 10, f"exit took {elapsed:.1f} s"


FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, sqlalchemy as sa, async_orm
    engine = async_orm.create_async_engine(sys.argv[1])
    async def use():
        async with async_orm.AsyncSession(engine) as s:
            return await s.scalar(sa.text("select 1"))
    assert asyncio.run(use()) == 1          # the parent leaves an idle worker behind
    pid = os.fork()
    if pid == 0:
        engine.sync_engine.dispose(close=False)
        try:
            ok = asyncio.run(asyncio.wait_for(use(), 10)) == 1
        except BaseException:
            ok = False
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_gets_fresh_workers(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, f"sqlite:///{tmp_path / 'fork.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


async def test_engines_reached_through_get_bind_are_instrumented(tmp_path: Any) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")

    class RoutingSession(Session):
        def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Any:
            return other

    session = async_orm.AsyncSession(sync_session_class=RoutingSession)
    try:
        assert (await session.scalar(text("select 1"))) == 1
        assert other.__dict__.get("_async_orm_instrumented")
        # ...so the loop guard covers it as well
        with pytest.raises(async_orm.exc.EventLoopIOError), other.connect() as conn:
            conn.execute(text("select 2"))
    finally:
        await session.close()
        other.dispose()


async def test_a_closed_session_is_freed_without_the_garbage_collector(tmp_path: Any) -> None:
    # the guard's and the bind watcher's overrides live in the sync session's __dict__;
    # they must not refer back to it, or every session would be a reference cycle
    import weakref

    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    engine = async_orm.create_async_engine(f"sqlite:///{tmp_path / 'x.db'}")
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")

    class RoutingSession(Session):
        def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Any:
            return other

    async with engine.begin() as conn:
        await conn.run_sync(User.metadata.create_all)
    gc.collect()
    gc.disable()
    try:
        for kw in ({"bind": engine}, {"sync_session_class": RoutingSession}):
            session = async_orm.AsyncSession(**kw)
            async with session:
                await session.execute(text("select 1"))
                await session.commit()
            # its worker may still hold its last call (a bound method of the session)
            # until it loops: stop the idle workers and wait for their threads to end
            _worker.pool.shrink()
            refs = [weakref.ref(session), weakref.ref(session.sync_session)]
            del session
            assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
        other.dispose()
        await engine.dispose()
