"""Invariant 4: workers bind to no event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from sqlalchemy import select, text

import async_orm
from async_orm.exc import CrossLoopError
from tests.models import User

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


async def _seed(maker: Maker) -> None:
    async with maker.begin() as session:
        session.add_all([User(id=i, name=f"user{i}") for i in range(1, 4)])


async def test_async_to_sync_a_hundred_times_in_a_row(maker: Maker) -> None:
    await _seed(maker)

    async def view(n: int) -> str | None:
        async with maker() as session:
            user = await session.get(User, n % 3 + 1)
            return user.name if user else None

    def sync_code() -> list[str | None]:
        return [async_to_sync(view)(n) for n in range(100)]

    names = await sync_to_async(sync_code, thread_sensitive=False)()
    assert names == [f"user{n % 3 + 1}" for n in range(100)]


async def test_several_threads_each_running_asyncio_run_share_one_engine(
    maker: Maker, engine: async_orm.AsyncEngine
) -> None:
    await _seed(maker)
    barrier = threading.Barrier(4)
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    async def work(n: int) -> list[str]:
        async with maker() as session:
            names = list((await session.scalars(select(User.name).order_by(User.id))).all())
            await asyncio.to_thread(barrier.wait, 10)  # all four loops are busy at once
            names.append(str(await session.scalar(text(f"select {n}"))))
            return names

    def thread_main(n: int) -> None:
        try:
            for round_ in range(3):  # asyncio.run() many times in one thread
                results[n * 10 + round_] = (
                    asyncio.run(work(n)) if round_ == 0 else asyncio.run(_single(maker, n))
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join, 60)
    assert not errors, errors
    for n in range(4):
        assert results[n * 10] == ["user1", "user2", "user3", str(n)]
        assert results[n * 10 + 1] == results[n * 10 + 2] == [str(n)]


async def _single(maker: Maker, n: int) -> list[str]:
    async with maker() as session:
        return [str(await session.scalar(text(f"select {n}")))]


async def test_one_session_used_from_two_loops_at_once_is_refused(maker: Maker) -> None:
    started = threading.Event()
    release = threading.Event()

    def block(session: object) -> None:
        started.set()
        release.wait(10)

    async with maker() as session:
        busy = asyncio.ensure_future(session.run_sync(block))
        await asyncio.to_thread(started.wait, 10)
        errors: list[BaseException] = []

        def other_loop() -> None:
            try:
                asyncio.run(session.execute(text("select 1")))
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=other_loop)
        t.start()
        await asyncio.to_thread(t.join, 10)
        release.set()
        await busy
        assert len(errors) == 1
        assert isinstance(errors[0], CrossLoopError)
        assert "from another event loop" in str(errors[0])
        # one loop at a time is fine: the session still works here
        assert (await session.execute(text("select 5"))).scalar() == 5


async def test_a_session_can_move_between_loops_when_idle(maker: Maker) -> None:
    await _seed(maker)
    session = maker()
    await session.get(User, 1)

    def elsewhere() -> str | None:
        async def use() -> str | None:
            user = await session.get(User, 2)
            return user.name if user else None

        return asyncio.run(use())

    name = await asyncio.to_thread(elsewhere)
    assert name == "user2"
    await session.close()


@pytest.mark.parametrize("n", [1])
async def test_sync_to_async_thread_sensitive_code_reaches_the_session(
    maker: Maker, n: int
) -> None:
    await _seed(maker)
    async with maker() as session:

        def sync_helper() -> str:
            # sync code called from async code can drive the async API again
            user = async_to_sync(session.get)(User, n)
            return user.name if user else ""

        assert await sync_to_async(sync_helper)() == "user1"
