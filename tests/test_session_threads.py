"""Invariants 1, 2, 6 and 8 seen from AsyncSession: one thread per session, order,
workers returned on close, results buffered on the worker."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

import async_orm
from async_orm import _worker
from tests.conftest import StatementThreads
from tests.models import Address, User

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


async def _seed(maker: Maker, n: int = 5) -> None:
    async with maker.begin() as session:
        session.add_all([User(id=i, name=f"user{i}") for i in range(1, n + 1)])


async def test_every_statement_of_a_session_runs_on_its_one_worker_thread(
    maker: Maker, statement_threads: StatementThreads
) -> None:
    await _seed(maker)
    statement_threads.records.clear()
    async with maker() as session:
        worker_ident = await session.run_sync(lambda s: threading.get_ident())
        await session.get(User, 1)
        await session.execute(select(User).where(User.id > 2))
        await session.scalars(select(User.name))
        user = await session.get(User, 2)
        assert user is not None
        user.name = "renamed"
        await session.flush()
        await session.commit()
    assert len(statement_threads.records) >= 4
    assert statement_threads.threads == {worker_ident}
    assert worker_ident != threading.get_ident()


async def test_sessions_in_concurrent_tasks_use_distinct_threads(
    maker: Maker, statement_threads: StatementThreads
) -> None:
    await _seed(maker)
    barrier = asyncio.Barrier(3)
    idents: list[int] = []

    async def request(n: int) -> None:
        async with maker() as session:
            await session.get(User, n)
            idents.append(await session.run_sync(lambda s: threading.get_ident()))
            await barrier.wait()  # all three sessions are open at once

    await asyncio.gather(*(request(n) for n in (1, 2, 3)))
    assert len(set(idents)) == 3


async def test_gathered_calls_on_one_session_run_in_submission_order(
    maker: Maker, statement_threads: StatementThreads
) -> None:
    await _seed(maker, 6)
    statement_threads.records.clear()
    async with maker() as session:
        results = await asyncio.gather(
            session.get(User, 1),
            session.execute(text("select 'second'")),
            session.get(User, 3),
            session.scalar(select(User.name).where(User.id == 4)),
            session.get(User, 5),
        )
    assert results[0] is not None and results[0].id == 1
    assert results[1].scalar() == "second"
    assert results[2] is not None and results[2].id == 3
    assert results[3] == "user4"
    assert results[4] is not None and results[4].id == 5
    statements = [s for _, s in statement_threads.records]
    positions = [
        next(i for i, s in enumerate(statements) if marker in s)
        for marker in ("users.id = ", "'second'")
    ]
    assert positions[0] < positions[1]
    assert len(statement_threads.threads) == 1


async def test_add_while_calls_are_in_flight_keeps_its_place_in_the_order(maker: Maker) -> None:
    async with maker() as session:
        first = asyncio.ensure_future(session.execute(text("select 1")))
        await asyncio.sleep(0)
        session.add(User(id=10, name="queued"))  # the worker is busy: queued behind
        got = await session.get(User, 10)  # autoflush sees the queued add
        await first
        assert got is not None and got.name == "queued"
        await session.rollback()


async def test_close_returns_the_worker_and_the_session_can_be_reused(maker: Maker) -> None:
    await _seed(maker, 2)
    session = maker()
    await session.get(User, 1)
    assert _worker.pool.stats()["busy"] >= 1
    await session.close()
    assert _worker.pool.stats()["busy"] == 0
    # a closed session takes a worker again on its next call
    assert await session.get(User, 2) is not None
    await session.close()
    assert _worker.pool.stats()["busy"] == 0


async def test_execute_results_are_buffered_on_the_worker(maker: Maker) -> None:
    await _seed(maker, 3)
    async with maker() as session:
        result = await session.execute(text("select id from users order by id"))
        # reading the rows on the event loop runs nothing on the database
        rows_before = []

        def forbid(*args: object) -> None:
            raise AssertionError("a statement ran while reading a buffered result")

        engine = session.sync_session.get_bind()
        event.listen(engine, "before_cursor_execute", forbid)
        try:
            rows_before = result.all()
        finally:
            event.remove(engine, "before_cursor_execute", forbid)
        assert [r.id for r in rows_before] == [1, 2, 3]


async def test_context_variables_reach_event_listeners_on_the_worker(
    maker: Maker, engine: async_orm.AsyncEngine
) -> None:
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")
    seen: list[str] = []

    def listener(*args: object) -> None:
        seen.append(tenant.get())

    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    try:
        tenant.set("acme")
        async with maker() as session:
            await session.execute(text("select 1"))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listener)
    assert seen == ["acme"]


async def test_sync_engine_and_existing_sessionmaker_config_work_unchanged(
    engine: async_orm.AsyncEngine,
) -> None:
    class LegacySession(Session):
        pass

    maker = async_orm.async_sessionmaker(engine.sync_engine, sync_session_class=LegacySession)
    async with maker() as session:
        assert isinstance(session.sync_session, LegacySession)
        session.add(User(id=1, name="legacy"))
        await session.commit()
        assert (await session.scalar(select(User.name))) == "legacy"


async def test_session_begin_commits_and_rolls_back(maker: Maker) -> None:
    async with maker() as session:
        async with session.begin():
            session.add(User(id=1, name="kept"))
        with pytest.raises(RuntimeError):
            async with session.begin():
                session.add(User(id=2, name="dropped"))
                await session.flush()
                raise RuntimeError("boom")
    async with maker() as session:
        assert (await session.scalars(select(User.name))).all() == ["kept"]


async def test_begin_nested_savepoint(maker: Maker) -> None:
    async with maker() as session:
        async with session.begin():
            session.add(User(id=1, name="outer"))
            nested = await session.begin_nested()
            session.add(User(id=2, name="inner"))
            await session.flush()
            await nested.rollback()
        assert (await session.scalars(select(User.name))).all() == ["outer"]


async def test_refresh_and_merge_and_delete(maker: Maker) -> None:
    await _seed(maker, 2)
    async with maker() as session:
        user = await session.get(User, 1)
        assert user is not None
        await session.execute(text("update users set name = 'changed' where id = 1"))
        await session.refresh(user)
        assert user.name == "changed"
        merged = await session.merge(User(id=2, name="merged"))
        assert merged.name == "merged"
        await session.delete(user)
        await session.commit()
    async with maker() as session:
        assert (await session.scalars(select(User.name))).all() == ["merged"]


async def test_relationship_cascade_through_add(maker: Maker) -> None:
    async with maker() as session:
        session.add(User(id=1, name="a", addresses=[Address(email="a@x"), Address(email="b@x")]))
        await session.commit()
        user = await session.get(User, 1)
        assert user is not None
        assert [a.email for a in await user.awaitable_attrs.addresses] == ["a@x", "b@x"]
