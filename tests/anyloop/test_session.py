"""AsyncSession under asyncio and Trio: the unit of work, transactions blocks,
expire_on_commit, awaitable_attrs, run_sync, and tasks of one task group sharing
one session (their calls run in the order made, on the session's one thread)."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from sqlalchemy import event, func, inspect, select, text, update

import async_orm
from async_orm.exc import EventLoopIOError
from tests.anyloop.conftest import LoopRun
from tests.conftest import StatementThreads
from tests.models import Address, User


async def _count(engine: async_orm.AsyncEngine, entity: Any = User) -> int:
    async with async_orm.AsyncSession(engine) as session:
        return int(await session.scalar(select(func.count()).select_from(entity)) or 0)


async def _rename_elsewhere(engine: async_orm.AsyncEngine, user_id: int, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(User).where(User.id == user_id).values(name=name))


def test_add_commit_get_refresh_and_delete(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
        async with maker() as session:
            ann = User(id=1, name="ann", addresses=[Address(id=1, email="ann@x")])
            session.add(ann)
            assert ann in session.new
            await session.commit()
            assert ann not in session.new and inspect(ann).persistent
            assert await session.get(User, 1) is ann  # the identity map
            await _rename_elsewhere(engine, 1, "ann2")
            assert ann.name == "ann"
            await session.refresh(ann)
            assert ann.name == "ann2"
        async with maker() as session:
            again = await session.get(User, 1)
            assert again is not None and again.name == "ann2"
            assert await session.get(User, 99) is None
            await session.delete(again)
            assert again in session.deleted
            await session.commit()
        assert await _count(engine) == 0
        assert await _count(engine, Address) == 0  # the cascade ran

    run(body)


def test_tasks_sharing_a_session_run_their_calls_in_the_order_made_on_one_thread(
    run: LoopRun,
) -> None:
    tasks = 12

    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()
        made: list[int] = []
        ran: list[tuple[int, int]] = []  # (marker, thread) per statement, as it runs
        holding, gate = threading.Event(), threading.Event()
        all_made = anyio.Event()

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *a: Any) -> None:
            if "as marker" in statement:
                value = parameters["i"] if isinstance(parameters, dict) else parameters[0]
                ran.append((value, threading.get_ident()))

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            async with async_orm.AsyncSession(engine) as session:
                await session.execute(text("select 1"))  # holds its worker from here

                def hold(sync_session: Any) -> int:
                    holding.set()
                    assert gate.wait(10), "the test never opened the gate"
                    return threading.get_ident()

                async def call(i: int) -> None:
                    made.append(i)  # the call is submitted in this same step
                    if len(made) == tasks:
                        all_made.set()
                    assert await session.scalar(text("select :i as marker"), {"i": i}) == i

                held_on: list[int] = []

                async def held() -> None:
                    held_on.append(await session.run_sync(hold))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(held)
                    assert await anyio.to_thread.run_sync(holding.wait, 10)
                    for i in range(tasks):
                        tg.start_soon(call, i)
                    with anyio.fail_after(10):
                        await all_made.wait()
                    assert ran == []  # every call is queued behind the held worker
                    gate.set()
        finally:
            gate.set()
            event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert sorted(made) == list(range(tasks))
        assert [value for value, _ in ran] == made, "calls ran out of the order they were made"
        threads = {thread for _, thread in ran} | set(held_on)
        assert len(threads) == 1 and loop_thread not in threads

    run(body)


def test_sessionmaker_begin_commits_and_rolls_back_on_error(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        maker = async_orm.async_sessionmaker(engine)
        async with maker.begin() as session:
            session.add(User(id=1, name="kept"))
            assert session.in_transaction()
        assert await _count(engine) == 1
        with pytest.raises(LookupError, match="abandon the block"):
            async with maker.begin() as session:
                session.add(User(id=2, name="rolled back"))
                await session.flush()
                raise LookupError("abandon the block")
        assert await _count(engine) == 1
        async with maker() as session:
            async with session.begin():
                session.add(User(id=3, name="kept too"))
            assert not session.in_transaction()
            with pytest.raises(LookupError, match="abandon the block"):
                async with session.begin():
                    session.add(User(id=4, name="rolled back too"))
                    await session.flush()
                    raise LookupError("abandon the block")
            ids = (await session.scalars(select(User.id).order_by(User.id))).all()
            assert ids == [1, 3]

    run(body)


def test_expire_on_commit_expires_loaded_attributes_and_false_keeps_them(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        statements = StatementThreads(engine.sync_engine)
        try:
            async with async_orm.async_sessionmaker(engine)() as session:  # True: the default
                user = User(id=1, name="one")
                session.add(user)
                await session.commit()
                assert "name" in inspect(user).expired_attributes
                with pytest.raises(EventLoopIOError, match=r"<User id=1>.*expired"):
                    _ = user.name  # a reload on the event loop is refused
                statements.records.clear()
                assert await user.awaitable_attrs.name == "one"
                assert statements.records, "awaitable_attrs did not reload the attribute"
            maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
            async with maker() as session:
                user = User(id=2, name="two")
                session.add(user)
                await session.commit()
                assert inspect(user).expired_attributes == set()
                statements.records.clear()
                assert user.name == "two"
                assert statements.records == []  # read from the instance, no SQL
        finally:
            statements.close()

    run(body)


def test_awaitable_attrs_lazy_loads_on_the_session_worker_thread(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()
        async with async_orm.AsyncSession(engine) as session, session.begin():
            session.add(User(id=1, name="ann", addresses=[Address(email="a1@x")]))
        statements = StatementThreads(engine.sync_engine)
        try:
            async with async_orm.AsyncSession(engine) as session:
                user = await session.get(User, 1)
                assert user is not None
                with pytest.raises(EventLoopIOError, match=r"User\.addresses"):
                    _ = user.addresses
                session_thread = await session.run_sync(lambda s: threading.get_ident())
                statements.records.clear()
                addresses = await user.awaitable_attrs.addresses
                assert [a.email for a in addresses] == ["a1@x"]
                assert user.addresses is addresses  # loaded now: plain access works
                address = addresses[0]
                assert await address.awaitable_attrs.user is user  # identity map, no SQL
            assert any("addresses" in s for _, s in statements.records)
            assert statements.threads == {session_thread} and session_thread != loop_thread
        finally:
            statements.close()

    run(body)


def test_run_sync_runs_a_function_with_the_sync_session_on_its_thread(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()
        async with async_orm.AsyncSession(engine) as session:

            def add_and_count(sync_session: Any, name: str, *, copies: int) -> tuple[int, int]:
                assert sync_session is session.sync_session
                sync_session.add_all([User(id=i, name=name) for i in range(1, copies + 1)])
                count = sync_session.query(User).count()  # autoflushes: sync I/O is fine here
                return count, threading.get_ident()

            count, thread = await session.run_sync(add_and_count, "n", copies=3)
            assert count == 3 and thread != loop_thread
            assert await session.run_sync(lambda s: threading.get_ident()) == thread

            def fails(sync_session: Any) -> None:
                raise LookupError("raised on the worker")

            with pytest.raises(LookupError, match="raised on the worker"):
                await session.run_sync(fails)
            await session.commit()
        assert await _count(engine) == 3

    run(body)
