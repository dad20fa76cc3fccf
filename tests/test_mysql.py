"""PyMySQL (MariaDB/MySQL): the third sync driver async_orm supports.

Runs when a server answers on 127.0.0.1:3306 (user root, database test, as on the
project's machines); skipped with the reason otherwise, required when CI=true
only if ASYNC_ORM_REQUIRE_MYSQL=1.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, select, text

import async_orm
from async_orm.exc import RollbackRequiredAfterCancel
from tests.models import Base, User

MYSQL_URL = os.environ.get("ASYNC_ORM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _mysql_unavailable() -> str | None:
    try:
        engine = sa.create_engine(MYSQL_URL, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as error:
        return f"MySQL/MariaDB at {MYSQL_URL} is not reachable: {error}"
    return None


@pytest.fixture
async def mysql_engine() -> AsyncIterator[async_orm.AsyncEngine]:
    reason = _mysql_unavailable()
    if reason is not None:
        if os.environ.get("ASYNC_ORM_REQUIRE_MYSQL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    database = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MYSQL_URL, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"create database {database}"))
    engine = async_orm.create_async_engine(
        sa.make_url(MYSQL_URL).set(database=database), pool_size=5, max_overflow=0
    )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    await engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f"drop database {database}"))
    admin.dispose()
    assert checked_out == 0


async def test_orm_round_trip_on_pymysql(mysql_engine: async_orm.AsyncEngine) -> None:
    maker = async_orm.async_sessionmaker(mysql_engine, expire_on_commit=False)
    async with maker.begin() as session:
        session.add_all([User(id=1, name="one"), User(id=2, name="two")])
    async with maker() as session:
        names = await asyncio.gather(
            session.scalar(select(User.name).where(User.id == 1)),
            session.scalar(select(User.name).where(User.id == 2)),
        )
        assert names == ["one", "two"]


async def test_cancellation_kills_the_running_query(mysql_engine: async_orm.AsyncEngine) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "SLEEP" in statement:
            loop.call_soon_threadsafe(started.set)

    event.listen(mysql_engine.sync_engine, "before_cursor_execute", on_statement)
    maker = async_orm.async_sessionmaker(mysql_engine)
    async with maker() as session:
        task = asyncio.ensure_future(session.execute(text("SELECT SLEEP(30)")))
        async with asyncio.timeout(10):
            await started.wait()
        begin = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.perf_counter() - begin < 2.0
        with pytest.raises(RollbackRequiredAfterCancel):
            await session.execute(text("select 1"))
        await session.rollback()
        assert (await session.execute(text("select 1"))).scalar() == 1
