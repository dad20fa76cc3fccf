"""The same API and guarantees under Trio, and under AnyIO on both of its backends.

Each test runs its own ``trio.run()`` (or ``anyio.run()``), on SQLite and PostgreSQL:
calls are handed back through Trio's own thread-safe door, and the worker belongs to
no event loop.  Synchronisation is by events; times are upper bounds only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from sqlalchemy import Integer, String, cast, event, select, text, update
from sqlalchemy.orm import selectinload

import async_orm
from async_orm import _worker
from async_orm.exc import EventLoopIOError, RollbackRequiredAfterCancel, WorkerSlotTimeout
from tests.models import Address, Base, User

trio = pytest.importorskip("trio")

SLOW = {
    "postgresql": "select pg_sleep(30)",
    "sqlite": (
        "with recursive c(x) as (select 1 union all select x + 1 from c) "
        "select count(*) from (select x from c limit 2000000000)"
    ),
}

Url = tuple[str, dict[str, Any]]


def run_trio(
    db_url: Url, body: Callable[[async_orm.AsyncEngine], Awaitable[None]], **kw: Any
) -> None:
    """``trio.run`` a test body with an engine holding the test tables."""
    url, base_kw = db_url

    async def main() -> None:
        engine = async_orm.create_async_engine(url, **{**base_kw, **kw})
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            await body(engine)
        finally:
            await engine.dispose()

    trio.run(main)


async def _slow_statements_at_the_server(session: async_orm.AsyncSession) -> int:
    """PostgreSQL: how many backends still run the slow statement."""
    return int(
        await session.scalar(
            text(
                "select count(*) from pg_stat_activity where state = 'active' "
                "and query like '%pg_sleep(30)%' and pid <> pg_backend_pid()"
            )
        )
    )


async def _seed(engine: async_orm.AsyncEngine, users: int = 3) -> None:
    async with async_orm.AsyncSession(engine) as session, session.begin():
        for i in range(1, users + 1):
            session.add(User(id=i, name=f"u{i}", addresses=[Address(email=f"u{i}@x")]))


def test_calls_of_a_nursery_sharing_a_session_run_in_order_on_one_thread(db_url: Url) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        await _seed(engine)
        threads: list[int] = []
        order: list[int] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            if "as marker" in statement:
                threads.append(threading.get_ident())
                order.append(parameters["i"] if isinstance(parameters, dict) else parameters[0])

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        async with async_orm.AsyncSession(engine) as session:

            async def get(i: int) -> None:
                assert await session.scalar(text("select :i as marker"), {"i": i}) == i

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(get, i)
                    await trio.lowlevel.checkpoint()  # each task submits in turn
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert order == list(range(20))
        assert len(set(threads)) == 1 and threading.get_ident() not in threads

    run_trio(db_url, body)


def test_database_io_on_the_trio_thread_is_refused(db_url: Url) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        await _seed(engine)
        async with async_orm.AsyncSession(engine) as session:
            user = await session.get(User, 1)
            assert user is not None
            with pytest.raises(EventLoopIOError, match=r"User\.addresses"):
                _ = user.addresses
            addresses = await user.awaitable_attrs.addresses
            assert [a.email for a in addresses] == ["u1@x"]
            with pytest.raises(EventLoopIOError):
                session.sync_session.execute(text("select 1"))

    run_trio(db_url, body)


def test_move_on_after_interrupts_the_statement_then_a_rollback_recovers(
    db_url: Url, backend: str
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        async with async_orm.AsyncSession(engine) as session:
            await session.execute(text("select 1"))
            started = time.monotonic()
            with trio.move_on_after(0.2) as scope:
                await session.execute(text(SLOW[backend]))
            assert scope.cancelled_caught
            assert time.monotonic() - started < 2.0, "the statement was not interrupted"
            with pytest.raises(RollbackRequiredAfterCancel):
                await session.execute(text("select 1"))
            await session.rollback()
            assert await session.scalar(text("select 2")) == 2
            if backend == "postgresql":
                assert await _slow_statements_at_the_server(session) == 0

    run_trio(db_url, body)


def test_fail_after_raises_too_slow_and_close_still_gives_everything_back(
    db_url: Url, backend: str
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
            async with async_orm.AsyncSession(engine) as session:
                await session.execute(text(SLOW[backend]))
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert engine._limiter.in_use == 0

    run_trio(db_url, body)


def test_slots_are_awaited_in_trio_and_time_out_with_a_clear_error(db_url: Url) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        holder = async_orm.AsyncSession(engine)
        await holder.execute(text("select 1"))
        waiter = async_orm.AsyncSession(engine)
        with pytest.raises(WorkerSlotTimeout):
            await waiter.execute(text("select 1"))
        got: list[int] = []

        async def wait_for_slot() -> None:
            got.append(await waiter.scalar(text("select 3")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_slot)
            await trio.sleep(0)
            assert got == []
            await holder.close()
        assert got == [3]
        await waiter.close()

    run_trio(db_url, body, pool_size=1, max_overflow=0, pool_timeout=0.3)


def test_streams_and_run_sync_under_trio(db_url: Url) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        await _seed(engine)
        async with async_orm.AsyncSession(engine) as session:
            names = [
                u.name async for u in await session.stream_scalars(select(User).order_by(User.id))
            ]
            assert names == ["u1", "u2", "u3"]
            count = await session.run_sync(lambda s: s.query(User).count())
            assert count == 3
            users = (
                await session.scalars(select(User).options(selectinload(User.addresses)))
            ).all()
            assert len(users[0].addresses) == 1

    run_trio(db_url, body)


def test_scoped_session_per_trio_task(db_url: Url) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        maker = async_orm.async_sessionmaker(engine)
        scoped = async_orm.async_scoped_session(maker, scopefunc=trio.lowlevel.current_task)
        seen: list[async_orm.AsyncSession] = []

        async def task() -> None:
            seen.append(scoped())
            assert scoped() is seen[-1]
            await scoped.execute(text("select 1"))
            await scoped.remove()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
            nursery.start_soon(task)
        assert len(seen) == 2 and seen[0] is not seen[1]

    run_trio(db_url, body)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_the_same_code_runs_under_anyio_on_both_backends(db_url: Url, anyio_backend: str) -> None:
    url, kw = db_url

    async def main() -> None:
        engine = async_orm.create_async_engine(url, **kw)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
        async with maker.begin() as session:
            session.add(User(id=1, name="ada"))
        results: list[str] = []

        async def read() -> None:
            async with maker() as session:
                user = await session.get(User, 1)
                assert user is not None
                results.append(user.name)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(read)
        with anyio.move_on_after(0.2):
            async with maker() as session:
                await session.execute(text(SLOW[url.split(":")[0].split("+")[0]]))
        assert results == ["ada"] * 5
        await engine.dispose()

    anyio.run(main, backend=anyio_backend)


def test_a_trio_application_of_200_tasks_on_a_pool_of_10(db_url: Url, backend: str) -> None:
    """200 tasks, pool 10 + 0, get / update / commit each, one statement cancelled:
    no error, threads within pool + 2, the cancelled statement gone from the server."""

    async def body(engine: async_orm.AsyncEngine) -> None:
        async with async_orm.AsyncSession(engine) as session, session.begin():
            session.add_all([User(id=i, name="0") for i in range(1, 11)])
        maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
        errors: list[BaseException] = []
        peak = 0

        async def request(i: int) -> None:
            nonlocal peak
            try:
                async with maker() as session:
                    user = await session.get(User, i % 10 + 1)
                    assert user is not None
                    await session.execute(  # atomic: concurrent requests lose nothing
                        update(User)
                        .where(User.id == user.id)
                        .values(name=cast(cast(User.name, Integer) + 1, String))
                    )
                    await session.commit()
                peak = max(peak, _worker.pool.stats()["busy"])
            except BaseException as error:  # collected, not raised: the test says which
                errors.append(error)

        async def cancelled() -> None:
            with trio.move_on_after(0.3):
                async with maker() as session:
                    await session.execute(text(SLOW[backend]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled)
            for i in range(200):
                nursery.start_soon(request, i)
        assert errors == []
        assert peak <= 10 + 2
        async with maker() as session:
            total = sum(int(u.name) for u in (await session.scalars(select(User))).all())
            assert total == 200
            if backend == "postgresql":
                assert await _slow_statements_at_the_server(session) == 0

    run_trio(db_url, body, pool_size=10, max_overflow=0, pool_timeout=60)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_a_rollback_queued_behind_a_stuck_call_is_awaited_for_at_most_grace(
    db_url: Url, anyio_backend: str
) -> None:
    """A call cancelled while its worker is stuck (here: user code the driver cannot
    interrupt) leaves the session fenced.  A rollback then queues behind the stuck
    call: it is awaited for at most GRACE and left queued, on both loop libraries; a
    task cancelled while awaiting it gets its cancellation; once the stuck call comes
    back, the queued rollback runs and the session works again."""
    url, kw = db_url
    entered = threading.Event()
    release = threading.Event()
    rolled_back = threading.Event()

    def stuck(sync_session: Any) -> None:
        sync_session.execute(text("select 1"))
        entered.set()
        release.wait(30)  # a wait no driver interrupt reaches

    async def main() -> None:
        engine = async_orm.create_async_engine(url, **kw)
        session = async_orm.AsyncSession(engine)
        event.listen(session.sync_session, "after_rollback", lambda s: rolled_back.set())
        try:
            assert await session.scalar(text("select 1")) == 1
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def run_stuck() -> None:
                    with scope:
                        await session.run_sync(stuck)

                tg.start_soon(run_stuck)
                assert await anyio.to_thread.run_sync(entered.wait, 10)
                scope.cancel()
            # the cancelled task has left (within GRACE); the worker is still stuck
            assert session._runner.state is _worker.State.FENCED
            with anyio.fail_after(_worker.GRACE + 5):
                await session.rollback()  # awaited for at most GRACE, left queued
            assert session._runner.state is _worker.State.FENCED
            assert not rolled_back.is_set()

            # cancelled while awaiting such a rollback: the cancellation, nothing else
            outcome: list[str] = []
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def run_rollback() -> None:
                    with scope:
                        await session.rollback()
                        outcome.append("returned")
                    outcome.append("cancelled" if scope.cancel_called else "?")

                tg.start_soon(run_rollback)
                await anyio.wait_all_tasks_blocked()  # it waits for the stuck worker
                scope.cancel()
            assert outcome == ["cancelled"]
        finally:
            release.set()
        # the stuck call comes back, then the queued rollbacks run, in order
        assert await anyio.to_thread.run_sync(rolled_back.wait, 10)
        await session.close()  # queued behind them: they are done when it returns
        assert await session.scalar(text("select 2")) == 2
        await session.close()
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        await engine.dispose()

    anyio.run(main, backend=anyio_backend)
