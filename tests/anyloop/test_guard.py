"""The loop guard under asyncio and Trio: a sync database call on the thread that
runs the event loop is refused with ``EventLoopIOError`` (a
``sqlalchemy.exc.MissingGreenlet``) before it reaches the pool or the driver, while
the awaited ways, the explicit opt-out and sync code on another thread still work."""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

import async_orm
from async_orm.exc import EventLoopIOError
from tests.anyloop.conftest import LoopRun
from tests.models import Address, User


def _checked_out(engine: async_orm.AsyncEngine) -> int:
    return int(engine.pool.checkedout())  # type: ignore[attr-defined]


def test_sync_database_calls_on_the_event_loop_thread_are_refused(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        async with async_orm.AsyncSession(engine) as session, session.begin():
            session.add(User(id=5, name="five", addresses=[Address(email="five@x")]))

        with pytest.raises(EventLoopIOError) as refused:
            engine.sync_engine.connect()
        assert isinstance(refused.value, sa_exc.MissingGreenlet)
        assert _checked_out(engine) == 0  # refused before the pool checkout

        async with async_orm.AsyncSession(engine) as session:
            with pytest.raises(EventLoopIOError, match="event loop"):
                session.sync_session.execute(text("select 1"))
            user = await session.get(User, 5)
            assert user is not None
            with pytest.raises(EventLoopIOError) as lazy:
                _ = user.addresses
            message = str(lazy.value)
            assert "User.addresses on <User id=5>" in message
            assert "selectinload(User.addresses)" in message
            assert "awaitable_attrs.addresses" in message and "run_sync" in message
            # the awaited ways do the same work, on the session's worker thread
            assert await session.scalar(text("select 1")) == 1
            assert await session.run_sync(lambda s: s.execute(text("select 2")).scalar()) == 2
            assert [a.email for a in await user.awaitable_attrs.addresses] == ["five@x"]

        with async_orm.allow_loop_io(), engine.sync_engine.connect() as conn:
            assert conn.scalar(text("select 7")) == 7  # the explicit opt-out

        def plain_sync() -> int:  # no event loop runs on AnyIO's worker thread
            with engine.sync_engine.connect() as conn:
                return int(conn.execute(text("select 9")).scalar_one())

        assert await anyio.to_thread.run_sync(plain_sync) == 9

    run(body)
