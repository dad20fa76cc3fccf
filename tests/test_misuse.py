"""Bad input and misuse get clear errors, not hangs."""

from __future__ import annotations

import asyncio
import threading
import traceback

import pytest
from asgiref.sync import async_to_sync
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import async_orm
from async_orm.exc import AsyncDriverURLError, ReentrantCallError
from tests.models import Base, User

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


@pytest.mark.parametrize(
    ("url", "suggested"),
    [
        (
            "postgresql+asyncpg://scott:tiger@localhost/db",
            "postgresql+psycopg://scott:***@localhost/db",
        ),
        ("postgresql+psycopg_async://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite+aiosqlite:///file.db", "sqlite:///file.db"),
        ("mysql+aiomysql://root@localhost/test", "mysql+pymysql://root@localhost/test"),
        ("mysql+asyncmy://root@localhost/test", "mysql+pymysql://root@localhost/test"),
    ],
)
def test_async_driver_urls_are_refused_with_the_sync_url_to_use(url: str, suggested: str) -> None:
    with pytest.raises(AsyncDriverURLError) as info:
        async_orm.create_async_engine(url)
    message = str(info.value)
    assert suggested in message
    assert "tiger" not in message
    assert isinstance(info.value, sa_exc.ArgumentError)


async def test_in_memory_sqlite_is_one_database_across_worker_threads() -> None:
    from async_orm import _worker

    max_idle = _worker.pool.max_idle
    _worker.pool.configure(max_idle=0)  # every session gets a fresh thread
    try:
        await _in_memory_across_threads()
    finally:
        _worker.pool.configure(max_idle=max_idle)


async def _in_memory_across_threads() -> None:
    engine = async_orm.create_async_engine("sqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    threads: set[str] = set()
    async with maker.begin() as session:
        session.add(User(id=1, name="memory"))
        threads.add(await session.run_sync(lambda s: threading.current_thread().name))

    async def reader() -> str | None:
        async with maker() as session:
            threads.add(await session.run_sync(lambda s: threading.current_thread().name))
            return await session.scalar(select(User.name))

    assert await asyncio.gather(reader(), reader(), reader()) == ["memory"] * 3
    assert len(threads) == 4
    await engine.dispose()


async def test_run_sync_keeps_the_exception_type_and_traceback(maker: Maker) -> None:
    class LegacyError(Exception):
        pass

    def legacy_helper(session: Session, value: int) -> None:
        session.execute(text("select 1"))
        raise LegacyError(f"bad value {value}")

    async with maker() as session:
        with pytest.raises(LegacyError, match="bad value 3") as info:
            await session.run_sync(legacy_helper, 3)
        frames = traceback.extract_tb(info.value.__traceback__)
        assert any(frame.name == "legacy_helper" for frame in frames)
        assert (await session.execute(text("select 4"))).scalar() == 4


async def test_session_async_api_inside_its_own_run_sync_is_a_clear_error(maker: Maker) -> None:
    def uses_async_api(session: Session) -> None:
        async_to_sync(outer.execute)(text("select 1"))

    async with maker() as outer:
        with pytest.raises(ReentrantCallError, match="inside its run_sync"):
            await outer.run_sync(uses_async_api)
        assert (await outer.execute(text("select 1"))).scalar() == 1


async def test_adding_an_unmapped_object_fails_at_once(maker: Maker) -> None:
    async with maker() as session:
        with pytest.raises(sa_exc.InvalidRequestError, match="not mapped"):
            session.add(object())
        with pytest.raises(sa_exc.InvalidRequestError, match="not mapped"):
            session.add_all([User(id=20, name="fine"), object()])


async def test_adding_an_unmapped_object_while_a_call_is_in_flight_fails_at_once(
    maker: Maker,
) -> None:
    async with maker() as session:
        in_flight = asyncio.ensure_future(session.execute(text("select 1")))
        await asyncio.sleep(0)  # submitted: add/add_all are now queued behind it
        with pytest.raises(sa_exc.InvalidRequestError, match="not mapped"):
            session.add(object())
        with pytest.raises(sa_exc.InvalidRequestError, match="not mapped"):
            session.add_all([User(id=21, name="fine"), object()])
        assert (await in_flight).scalar() == 1
        # nothing was queued: the next awaited call raises no deferred error
        assert (await session.execute(text("select 2"))).scalar() == 2
        assert not session.new


async def test_executing_a_non_statement_is_a_clear_sqlalchemy_error(maker: Maker) -> None:
    async with maker() as session:
        with pytest.raises(sa_exc.ArgumentError):
            await session.execute("select 1")  # type: ignore[arg-type]
        assert (await session.execute(text("select 1"))).scalar() == 1
