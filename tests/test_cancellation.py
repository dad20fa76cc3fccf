"""Invariant 5: cancelling a task interrupts its running statement at the driver,
drops its queued calls, requires a rollback, and never leaks a connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, select, text

import async_orm
from async_orm.exc import RollbackRequiredAfterCancel
from tests.conftest import PG_URL
from tests.models import User

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]

# a statement that runs for a long time on each backend
SLOW = {
    "postgresql": "select pg_sleep(30)",
    "sqlite": (
        "with recursive c(x) as (select 1 union all select x + 1 from c) "
        "select count(*) from (select x from c limit 2000000000)"
    ),
}


class StatementStarted:
    """An asyncio.Event set (from the worker thread) when a statement matching
    ``marker`` starts."""

    def __init__(self, engine: async_orm.AsyncEngine, marker: str) -> None:
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.marker = marker
        self.engine = engine.sync_engine
        event.listen(self.engine, "before_cursor_execute", self._check)

    def _check(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.marker in statement:
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self) -> None:
        async with asyncio.timeout(10):
            await self.event.wait()

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._check)


@pytest.fixture
async def slow_started(
    engine: async_orm.AsyncEngine, backend: str
) -> AsyncIterator[StatementStarted]:
    started = StatementStarted(engine, SLOW[backend][:20])
    yield started
    started.close()


def _pg_running_sleeps(application_name: str) -> int:
    admin = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        count = conn.scalar(
            text(
                "select count(*) from pg_stat_activity where application_name = :app "
                "and state = 'active' and query like '%pg_sleep%'"
            ),
            {"app": application_name},
        )
    admin.dispose()
    return int(count or 0)


async def test_cancelling_a_running_statement_interrupts_it_promptly(
    maker: Maker, backend: str, slow_started: StatementStarted, db_url: Any
) -> None:
    async with maker() as session:
        task = asyncio.ensure_future(session.execute(text(SLOW[backend])))
        await slow_started.wait()
        start = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"cancellation took {elapsed:.2f} s"
        if backend == "postgresql":
            app = db_url[1]["connect_args"]["application_name"]
            assert _pg_running_sleeps(app) == 0
        # the transaction is in an unknown state until rolled back
        with pytest.raises(RollbackRequiredAfterCancel, match="rollback"):
            await session.execute(text("select 1"))
        await session.rollback()
        assert (await session.execute(text("select 1"))).scalar() == 1


async def test_timeout_interrupts_the_statement_and_raises_timeout_error(
    maker: Maker, backend: str, slow_started: StatementStarted
) -> None:
    async with maker() as session:
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(session.execute(text(SLOW[backend])), 0.2)
        assert time.perf_counter() - start < 1.2
        await session.rollback()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await session.execute(text(SLOW[backend]))
        await session.rollback()
        assert (await session.execute(text("select 2"))).scalar() == 2


async def test_queued_calls_of_a_cancelled_task_are_dropped(
    maker: Maker, backend: str, slow_started: StatementStarted
) -> None:
    ran: list[str] = []
    async with maker() as session:
        running = asyncio.ensure_future(session.execute(text(SLOW[backend])))
        await slow_started.wait()
        queued = asyncio.ensure_future(session.run_sync(lambda s: ran.append("queued")))
        await asyncio.sleep(0)  # submitted behind the running statement
        queued.cancel()
        running.cancel()
        results = await asyncio.gather(running, queued, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        await session.rollback()
        await session.run_sync(lambda s: ran.append("after"))
    assert ran == ["after"]


async def test_cancelled_request_leaks_no_connection_and_no_worker(
    engine: async_orm.AsyncEngine, maker: Maker, backend: str, slow_started: StatementStarted
) -> None:
    async def request() -> None:
        async with maker() as session:
            session.add(User(id=1, name="never committed"))
            await session.flush()
            await session.execute(text(SLOW[backend]))

    task = asyncio.ensure_future(request())
    await slow_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert async_orm._worker.pool.stats()["busy"] == 0
    async with maker() as session:
        assert (await session.scalars(select(User))).all() == []


async def _cancel_running(call: Any, started: StatementStarted) -> None:
    """Start ``call`` in a task, cancel it once its statement runs, wait for it."""
    task = asyncio.ensure_future(call)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_connection_whose_statement_was_cancelled_requires_a_rollback(
    engine: async_orm.AsyncEngine, backend: str, slow_started: StatementStarted
) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))
        await _cancel_running(conn.execute(text(SLOW[backend])), slow_started)
        with pytest.raises(RollbackRequiredAfterCancel, match=r"await conn\.rollback\(\)"):
            await conn.execute(text("select 1"))
        with pytest.raises(RollbackRequiredAfterCancel):
            await conn.commit()
        await conn.rollback()
        assert (await conn.execute(text("select 1"))).scalar() == 1


async def test_rolling_back_a_savepoint_does_not_clear_the_after_cancel_state(
    engine: async_orm.AsyncEngine, maker: Maker, backend: str, slow_started: StatementStarted
) -> None:
    # sessions and connections alike: only a root rollback ends the unknown state
    async with maker() as session:
        nested = await session.begin_nested()
        await _cancel_running(session.execute(text(SLOW[backend])), slow_started)
        await nested.rollback()
        with pytest.raises(RollbackRequiredAfterCancel, match=r"session\.rollback\(\)"):
            await session.execute(text("select 1"))
        await session.rollback()
        assert (await session.execute(text("select 1"))).scalar() == 1
    slow_started.event.clear()
    async with engine.connect() as conn:
        root = await conn.begin()
        savepoint = await conn.begin_nested()
        await _cancel_running(conn.execute(text(SLOW[backend])), slow_started)
        await savepoint.rollback()
        with pytest.raises(RollbackRequiredAfterCancel, match=r"conn\.rollback\(\)"):
            await conn.execute(text("select 1"))
        await root.rollback()
        assert (await conn.execute(text("select 1"))).scalar() == 1


async def test_a_begin_block_that_swallowed_a_cancellation_rolls_back_instead_of_committing(
    engine: async_orm.AsyncEngine, maker: Maker, backend: str, slow_started: StatementStarted
) -> None:
    # the block ends normally, but a cancelled statement left its transaction in an
    # unknown state: the exit must not commit the half that ran before it
    with pytest.raises(RollbackRequiredAfterCancel):
        async with engine.begin() as conn:
            await conn.execute(sa.insert(User), {"id": 1, "name": "core"})
            await _cancel_running(conn.execute(text(SLOW[backend])), slow_started)
    slow_started.event.clear()
    with pytest.raises(RollbackRequiredAfterCancel):
        async with maker() as session, session.begin():
            session.add(User(id=2, name="orm"))
            await session.flush()
            await _cancel_running(session.execute(text(SLOW[backend])), slow_started)
    async with maker() as session:
        assert (await session.scalars(select(User))).all() == []
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_cancelled_while_entering_maker_begin_gives_the_worker_back(
    engine: async_orm.AsyncEngine, maker: Maker
) -> None:
    # async with maker.begin(): a cancellation while the BEGIN runs on the worker ends
    # __aenter__, so __aexit__ never runs; the session it made must still be closed
    loop = asyncio.get_running_loop()
    beginning = asyncio.Event()
    release = threading.Event()
    entered = []

    def hold(session: Any, transaction: Any) -> None:
        if transaction.parent is None:
            loop.call_soon_threadsafe(beginning.set)
            release.wait(10)

    event.listen(async_orm.AsyncSession.sync_session_class, "after_transaction_create", hold)
    try:

        async def request() -> None:
            async with maker.begin() as session:
                entered.append(session)

        task = asyncio.ensure_future(request())
        async with asyncio.timeout(10):
            await beginning.wait()
        task.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        event.remove(async_orm.AsyncSession.sync_session_class, "after_transaction_create", hold)
    assert entered == []
    assert engine._limiter.in_use == 0
    assert async_orm._worker.pool.stats()["busy"] == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_cancellation_during_close_still_closes(
    engine: async_orm.AsyncEngine, maker: Maker
) -> None:
    loop = asyncio.get_running_loop()
    closing = asyncio.Event()
    release = threading.Event()
    session = maker()
    await session.execute(text("select 1"))  # holds a connection: close needs the worker

    def slow_close() -> None:
        loop.call_soon_threadsafe(closing.set)
        release.wait(10)

    await session.run_sync(
        lambda s: event.listen(s, "after_transaction_end", lambda *a: slow_close())
    )
    task = asyncio.ensure_future(session.close())
    async with asyncio.timeout(10):
        await closing.wait()
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert async_orm._worker.pool.stats()["busy"] == 0
