"""Cancellation and back-pressure under asyncio and Trio.

A timeout (``anyio.move_on_after`` / ``anyio.fail_after``) or a cancelled scope
around a running statement interrupts it at the driver (PostgreSQL's cancel, seen
in ``pg_stat_activity``; sqlite3's ``interrupt()``, seen in how soon a query of two
billion rows returns); the session or connection then needs a rollback and works
after it.  With every worker slot held, a further session waits on the event loop,
for at most ``pool_timeout``, and gets its slot when the holder closes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

import async_orm
from async_orm.exc import RollbackRequiredAfterCancel, WorkerSlotTimeout
from tests.anyloop.conftest import LoopRun, StatementStarted, wait_until_not_active
from tests.models import User

TIMEOUT = 0.2
#: an interrupted statement returns within this long after the timeout fired (a
#: statement that was not interrupted runs for 30 s, or minutes on SQLite)
PROMPTLY = 1.0


@pytest.mark.parametrize("how", ["move_on_after", "fail_after"])
def test_a_timeout_interrupts_the_running_statement_and_a_rollback_recovers(
    run: LoopRun, how: str
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        started = StatementStarted(engine, run.slow[:20])
        try:
            async with async_orm.AsyncSession(engine) as session:
                # a transaction and a connection first, so the timeout hits the statement
                pid = await session.scalar(
                    text("select pg_backend_pid()" if run.backend == "postgresql" else "select 0")
                )
                begun = time.monotonic()
                if how == "move_on_after":
                    with anyio.move_on_after(TIMEOUT) as scope:
                        await session.execute(text(run.slow))
                    assert scope.cancelled_caught
                else:
                    with pytest.raises(TimeoutError), anyio.fail_after(TIMEOUT):
                        await session.execute(text(run.slow))
                returned = time.monotonic()
                assert started.started.is_set(), "the slow statement never reached the driver"
                fired = begun + TIMEOUT
                assert returned - fired < PROMPTLY, (
                    f"the statement ran {returned - fired:.2f} s past the timeout: "
                    "it was not interrupted at the driver"
                )
                if run.backend == "postgresql":
                    await wait_until_not_active(run, int(pid), since=fired, within=PROMPTLY)
                with pytest.raises(RollbackRequiredAfterCancel, match=r"rollback\(\)"):
                    await session.execute(text("select 1"))
                await session.rollback()
                assert await session.scalar(text("select 2")) == 2
                session.add(User(id=1, name="after the rollback"))
                await session.commit()
            assert started.threads and len(set(started.threads)) == 1
        finally:
            started.close()
        async with async_orm.AsyncSession(engine) as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 1

    run(body)


def test_cancelling_a_scope_once_the_statement_runs_interrupts_it_on_a_connection(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        started = StatementStarted(engine, run.slow[:20])
        cancelled_at: list[float] = []
        try:
            async with engine.connect() as conn:
                pid = await conn.scalar(
                    text("select pg_backend_pid()" if run.backend == "postgresql" else "select 0")
                )
                with anyio.CancelScope() as scope:

                    async def cancel_once_started() -> None:
                        await started.wait()
                        cancelled_at.append(time.monotonic())
                        scope.cancel()

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(cancel_once_started)
                        await conn.execute(text(run.slow))
                    raise AssertionError("the statement ended without being cancelled")
                assert scope.cancelled_caught
                assert time.monotonic() - cancelled_at[0] < PROMPTLY
                if run.backend == "postgresql":
                    await wait_until_not_active(run, int(pid), since=cancelled_at[0])
                with pytest.raises(RollbackRequiredAfterCancel, match=r"conn\.rollback\(\)"):
                    await conn.execute(text("select 1"))
                await conn.rollback()
                assert await conn.scalar(text("select 3")) == 3
        finally:
            started.close()

    run(body)


def test_a_session_waiting_for_the_only_slot_times_out_after_pool_timeout(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        async with async_orm.AsyncSession(engine) as holder:
            await holder.execute(text("select 1"))
            async with async_orm.AsyncSession(engine) as waiter:
                begun = time.monotonic()
                with pytest.raises(sa_exc.TimeoutError) as info:
                    await waiter.execute(text("select 2"))
                waited = time.monotonic() - begun
            assert isinstance(info.value, WorkerSlotTimeout)
            assert "0.5 s" in str(info.value) and "1 slots" in str(info.value)
            assert 0.5 - 0.05 <= waited < 0.5 + PROMPTLY
            assert await holder.scalar(text("select 3")) == 3  # the holder is unaffected
        async with async_orm.AsyncSession(engine) as after:  # the slot is free again
            assert await after.scalar(text("select 4")) == 4

    run(body, pool_size=1, max_overflow=0, pool_timeout=0.5)


def test_a_session_waiting_for_the_only_slot_gets_it_when_the_holder_closes(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        holder = async_orm.AsyncSession(engine)
        got: list[int] = []

        async def wait_for_the_slot() -> None:
            async with async_orm.AsyncSession(engine) as waiter:
                got.append(await waiter.scalar(text("select 5")))

        try:
            await holder.execute(text("select 1"))
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_for_the_slot)
                    await anyio.wait_all_tasks_blocked()
                    assert got == []
                    # it waits on the event loop, in the engine's slot queue
                    assert engine._limiter.in_use == 1 and len(engine._limiter._queue) == 1
                    await holder.close()
        finally:
            await holder.close()
        assert got == [5]
        assert engine._limiter.in_use == 0

    run(body, pool_size=1, max_overflow=0)


def test_a_call_cancelled_while_queued_is_dropped_and_the_session_carries_on(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        holding, gate = threading.Event(), threading.Event()
        ran: list[str] = []

        def hold(sync_session: Any) -> None:
            holding.set()
            assert gate.wait(10), "the test never opened the gate"
            ran.append("held")

        async with async_orm.AsyncSession(engine) as session:
            await session.execute(text("select 1"))
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(session.run_sync, hold)
                    assert await anyio.to_thread.run_sync(holding.wait, 10)
                    with anyio.CancelScope() as queued:
                        queued.cancel()  # cancelled before it runs: it is never started
                        await session.run_sync(lambda s: ran.append("queued"))
                    assert queued.cancelled_caught
                    gate.set()
            finally:
                gate.set()
            await session.run_sync(lambda s: ran.append("after"))
            assert await session.scalar(text("select 4")) == 4
        assert ran == ["held", "after"]

    run(body)


def test_a_session_cancelled_while_waiting_for_a_slot_holds_none_and_works_later(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        holder = async_orm.AsyncSession(engine)
        try:
            await holder.execute(text("select 1"))
            async with async_orm.AsyncSession(engine) as waiter:
                with anyio.move_on_after(TIMEOUT) as scope:
                    await waiter.execute(text("select 2"))
                assert scope.cancelled_caught
                assert engine._limiter.in_use == 1 and len(engine._limiter._queue) == 0
                await holder.close()
                assert await waiter.scalar(text("select 3")) == 3
        finally:
            await holder.close()

    run(body, pool_size=1, max_overflow=0)
