"""The Core layer: create_async_engine, async_engine_from_config,
create_async_pool_from_url, AsyncEngine, AsyncConnection and AsyncTransaction,
every public method and attribute, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.pool import Pool

import async_orm
from async_orm import AsyncConnection, AsyncEngine, AsyncTransaction, _worker
from async_orm import exc as async_exc
from tests.conftest import StatementThreads
from tests.models import Base, User

DbUrl = tuple[str, dict[str, Any]]


def _checked_out(engine: AsyncEngine) -> int:
    return engine.pool.checkedout()  # type: ignore[attr-defined,no-any-return]


async def _count_users(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(User)))


# -- engine factories ----------------------------------------------------------------


async def test_create_async_engine_passes_create_engine_arguments(db_url: DbUrl) -> None:
    url, kwargs = db_url
    engine = async_orm.create_async_engine(url, pool_size=3, max_overflow=1, echo=False, **kwargs)
    try:
        assert isinstance(engine, AsyncEngine) and isinstance(engine.sync_engine, Engine)
        assert engine.sync_engine.pool.size() == 3  # type: ignore[attr-defined]
        assert engine.url == make_url(url)
        async with engine.connect() as conn:
            assert await conn.scalar(select(1)) == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("async_url", "sync_url"),
    [
        ("postgresql+asyncpg://u@db/app", "postgresql+psycopg://u@db/app"),
        ("postgresql+psycopg_async://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite+aiosqlite:///app.db", "sqlite:///app.db"),
        ("mysql+aiomysql://u@db/app", "mysql+pymysql://u@db/app"),
    ],
)
def test_create_async_engine_refuses_async_driver_urls_naming_the_sync_one(
    async_url: str, sync_url: str
) -> None:
    with pytest.raises(async_exc.AsyncDriverURLError) as caught:
        async_orm.create_async_engine(async_url)
    assert sync_url in str(caught.value)
    with pytest.raises(async_exc.AsyncDriverURLError):
        async_orm.create_async_pool_from_url(async_url)
    assert isinstance(caught.value, sa_exc.ArgumentError)


def test_create_async_engine_refuses_global_server_side_cursors(db_url: DbUrl) -> None:
    url, kwargs = db_url
    with pytest.raises(async_exc.AsyncMethodRequired, match=r"stream\(\)"):
        async_orm.create_async_engine(url, server_side_cursors=True, **kwargs)


async def test_in_memory_sqlite_is_one_database_for_every_worker() -> None:
    engine = async_orm.create_async_engine("sqlite://")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(insert(User).values(id=1, name="ann"))
        async with async_orm.async_sessionmaker(engine)() as session:
            assert await session.scalar(select(User.name)) == "ann"
    finally:
        await engine.dispose()


async def test_async_engine_from_config_reads_prefixed_keys(db_url: DbUrl) -> None:
    url, kwargs = db_url
    config = {"sqlalchemy.url": url, "sqlalchemy.pool_size": "3", "sqlalchemy.echo": "false"}
    engine = async_orm.async_engine_from_config(config, **kwargs)
    other = async_orm.async_engine_from_config({"db.url": url, "db.echo": "true"}, "db.", **kwargs)
    try:
        assert engine.sync_engine.pool.size() == 3  # type: ignore[attr-defined]
        assert engine.echo is False  # coerced from the string
        assert other.echo is True
        async with engine.connect() as conn:
            assert await conn.scalar(select(1)) == 1
    finally:
        await engine.dispose()
        await other.dispose()


def test_create_async_pool_from_url_makes_a_working_pool(db_url: DbUrl) -> None:
    url, _ = db_url
    pool = async_orm.create_async_pool_from_url(url, pool_size=2)
    assert isinstance(pool, Pool)
    conn = pool.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("select 1")
        assert cursor.fetchone()[0] == 1
        cursor.close()
    finally:
        conn.close()
        pool.dispose()


# -- AsyncEngine --------------------------------------------------------------------


async def test_engine_begin_commits_or_rolls_back(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert isinstance(conn, AsyncConnection) and conn.in_transaction()
        await conn.execute(insert(User).values(id=1, name="ann"))
    with pytest.raises(ZeroDivisionError):
        async with engine.begin() as conn:
            await conn.execute(insert(User).values(id=2, name="bob"))
            1 / 0  # noqa: B018
    assert await _count_users(engine) == 1
    assert _checked_out(engine) == 0


async def test_engine_connect_is_awaitable_and_a_context_manager(engine: AsyncEngine) -> None:
    conn = engine.connect()
    assert isinstance(conn, AsyncConnection) and conn.sync_connection is None
    started = await conn
    assert started is conn and isinstance(conn.sync_connection, Connection)
    await conn.close()
    async with engine.connect() as conn:
        assert _checked_out(engine) == 1
    assert _checked_out(engine) == 0 and conn.closed


async def test_engine_dispose_with_and_without_closing(engine: AsyncEngine) -> None:
    assert await _count_users(engine) == 0
    old_pool = engine.pool
    assert old_pool.checkedin() == 1  # type: ignore[attr-defined]
    await engine.dispose()
    assert engine.pool is not old_pool and old_pool.checkedin() == 0  # type: ignore[attr-defined]
    assert await _count_users(engine) == 0  # usable afterwards, on a new pool
    kept_pool = engine.pool
    await engine.dispose(close=False)
    assert engine.pool is not kept_pool
    assert kept_pool.checkedin() == 1  # type: ignore[attr-defined]  # left open, not closed
    await asyncio.to_thread(kept_pool.dispose)
    assert await _count_users(engine) == 0


async def test_engine_execution_options(engine: AsyncEngine) -> None:
    serializable = engine.execution_options(isolation_level="SERIALIZABLE")
    assert isinstance(serializable, AsyncEngine) and serializable is not engine
    assert serializable.get_execution_options()["isolation_level"] == "SERIALIZABLE"
    assert "isolation_level" not in engine.get_execution_options()
    assert serializable.pool is engine.pool
    async with serializable.connect() as conn:
        assert await conn.get_isolation_level() == "SERIALIZABLE"
    engine.update_execution_options(logging_token="parity")
    assert engine.get_execution_options()["logging_token"] == "parity"


async def test_engine_clear_compiled_cache(engine: AsyncEngine) -> None:
    cache = engine.sync_engine._compiled_cache
    assert cache is not None
    async with engine.connect() as conn:
        await conn.execute(select(User).where(User.id == 1))
    assert len(cache) > 0
    engine.clear_compiled_cache()
    assert len(cache) == 0


async def test_engine_raw_connection_is_a_pooled_dbapi_connection(engine: AsyncEngine) -> None:
    raw = await engine.raw_connection()
    try:
        assert _checked_out(engine) == 1
        assert isinstance(raw.dbapi_connection, (sqlite3.Connection, psycopg.Connection))

        def query() -> Any:
            cursor = raw.cursor()
            cursor.execute("select 1")
            row = cursor.fetchone()
            cursor.close()
            return row[0]

        assert await asyncio.to_thread(query) == 1
    finally:
        await asyncio.to_thread(raw.close)
    assert _checked_out(engine) == 0


async def test_engine_attributes(engine: AsyncEngine, backend: str) -> None:
    sync = engine.sync_engine
    assert engine.engine is sync
    assert engine.url is sync.url and engine.pool is sync.pool and engine.dialect is sync.dialect
    assert engine.name == backend
    assert engine.driver == {"sqlite": "pysqlite", "postgresql": "psycopg"}[backend]
    assert engine.echo == sync.echo and not engine.echo
    engine.echo = True
    assert sync.echo is True
    engine.echo = False
    engine.url = engine.url
    engine.dialect = engine.dialect
    engine.pool = engine.pool
    assert backend in repr(engine)


async def test_async_engine_wraps_an_existing_sync_engine(engine: AsyncEngine) -> None:
    wrapped = AsyncEngine(engine.sync_engine)
    assert wrapped == engine and hash(wrapped) == hash(engine)
    assert (wrapped != engine) is False
    assert await _count_users(wrapped) == 0
    with pytest.raises(sa_exc.ArgumentError):
        AsyncEngine("sqlite://")  # type: ignore[arg-type]


# -- AsyncConnection ----------------------------------------------------------------


async def test_connection_start_and_its_misuse_errors(engine: AsyncEngine) -> None:
    conn = engine.connect()
    with pytest.raises(async_exc.AsyncContextNotStarted, match="await"):
        await conn.execute(select(1))
    with pytest.raises(async_exc.AsyncContextNotStarted):
        conn.begin()
    assert await conn.start() is conn
    with pytest.raises(async_exc.AsyncContextAlreadyStarted):
        await conn.start()
    await conn.close()


async def test_connection_close_aclose_and_closed(engine: AsyncEngine) -> None:
    for closer in ("close", "aclose"):
        conn = await engine.connect()
        await conn.scalar(select(1))
        assert conn.closed is False and _checked_out(engine) == 1
        await getattr(conn, closer)()
        assert conn.closed is True and _checked_out(engine) == 0
        assert _worker.pool.stats()["busy"] == 0


async def test_connection_invalidate(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.scalar(select(1))
        trans = conn.get_transaction()
        assert trans is not None and trans.is_valid
        assert conn.invalidated is False
        await conn.invalidate()
        assert conn.invalidated is True
        assert trans.is_valid is False
        await conn.rollback()
        assert await conn.scalar(select(2)) == 2  # reconnects
    assert _checked_out(engine) == 0


async def test_connection_execute_exec_driver_sql_scalar_scalars(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(
            insert(User), [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]
        )
        assert isinstance(inserted, CursorResult)
        result = await conn.execute(
            select(User.name).where(User.id == sa.bindparam("uid")), {"uid": 2}
        )
        assert isinstance(result, CursorResult)
        raw = await conn.exec_driver_sql("select count(*) from users")
        assert raw.scalar() == 2
        marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        raw = await conn.exec_driver_sql(f"select name from users where id = {marker}", (1,))
        assert raw.all() == [("ann",)]
        assert await conn.scalar(select(User.name).where(User.id == 1)) == "ann"
        assert (await conn.scalars(select(User.id).order_by(User.id))).all() == [1, 2]
        assert await conn.scalar(text("select name from users where id = :i"), {"i": 2}) == "bob"
        options = {"compiled_cache": None}
        assert (await conn.execute(select(User.id), execution_options=options)).all()
    # buffered on the worker: readable after the connection closed
    assert result.all() == [("bob",)]


async def test_connection_run_sync_runs_on_the_connection_thread(
    engine: AsyncEngine, statement_threads: StatementThreads
) -> None:
    def work(sync_conn: Connection, user_id: int, *, name: str) -> int:
        sync_conn.execute(insert(User).values(id=user_id, name=name))
        return threading.get_ident()

    async with engine.begin() as conn:
        ident = await conn.run_sync(work, 1, name="ann")
        await conn.scalar(select(User.name))
        assert ident != threading.get_ident()
        assert statement_threads.threads == {ident}
    assert await _count_users(engine) == 1


async def test_connection_raw_connection_and_attributes(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.dbapi_connection, (sqlite3.Connection, psycopg.Connection))
        assert conn.engine is engine
        assert conn.sync_engine is engine.sync_engine
        assert isinstance(conn.sync_connection, Connection)
        assert conn.dialect is engine.dialect
        conn.dialect = conn.dialect
        conn.info["tag"] = "x"
        assert conn.sync_connection.info == {"tag": "x"}
        with pytest.raises(sa_exc.InvalidRequestError, match="get_raw_connection"):
            _ = conn.connection
        other = await engine.connect()
        assert other != conn and conn == conn
        await other.close()


async def test_connection_isolation_level_and_execution_options(
    engine: AsyncEngine, backend: str
) -> None:
    async with engine.connect() as conn:
        default = {"sqlite": "SERIALIZABLE", "postgresql": "READ COMMITTED"}[backend]
        assert conn.default_isolation_level == default
        assert await conn.get_isolation_level() == default
        same = await conn.execution_options(isolation_level="READ UNCOMMITTED")
        assert same is conn
        assert await conn.get_isolation_level() == "READ UNCOMMITTED"
    async with engine.connect() as conn:  # reset when returned to the pool
        assert await conn.get_isolation_level() == default


async def test_connection_transaction_methods_and_accessors(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert conn.in_transaction() is False
        assert conn.get_transaction() is None and conn.get_nested_transaction() is None
        trans = await conn.begin()
        assert conn.in_transaction() and conn.get_transaction() == trans
        await conn.execute(insert(User).values(id=1, name="ann"))
        nested = await conn.begin_nested()
        assert conn.in_nested_transaction() and conn.get_nested_transaction() == nested
        await conn.execute(insert(User).values(id=2, name="bob"))
        await nested.rollback()
        assert conn.in_nested_transaction() is False
        await conn.commit()
        assert conn.in_transaction() is False
        await conn.execute(insert(User).values(id=3, name="carl"))  # autobegin
        await conn.rollback()
    assert await _count_users(engine) == 1


# -- AsyncTransaction ---------------------------------------------------------------


async def test_transaction_start_commit_rollback_close(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        trans = conn.begin()
        assert isinstance(trans, AsyncTransaction)
        assert trans.sync_transaction is None and trans.connection is conn
        assert trans.nested is False
        with pytest.raises(async_exc.AsyncContextNotStarted):
            _ = trans.is_active
        assert await trans.start() is trans
        with pytest.raises(async_exc.AsyncContextAlreadyStarted):
            await trans.start()
        assert trans.is_active and trans.is_valid
        await conn.execute(insert(User).values(id=1, name="ann"))
        await trans.commit()
        assert trans.is_active is False

        trans = await conn.begin()
        await conn.execute(insert(User).values(id=2, name="bob"))
        await trans.rollback()

        trans = await conn.begin()
        await conn.execute(insert(User).values(id=3, name="carl"))
        await trans.close()  # a root transaction rolls back
        assert conn.in_transaction() is False
    assert await _count_users(engine) == 1


async def test_transaction_async_with_commits_or_rolls_back(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        async with conn.begin() as trans:
            assert isinstance(trans, AsyncTransaction) and trans.is_active
            await conn.execute(insert(User).values(id=1, name="ann"))
            async with conn.begin_nested() as nested:
                assert nested.nested is True
                await conn.execute(insert(User).values(id=2, name="bob"))
            with pytest.raises(ZeroDivisionError):
                async with conn.begin_nested():
                    await conn.execute(insert(User).values(id=3, name="carl"))
                    1 / 0  # noqa: B018
        with pytest.raises(ZeroDivisionError):
            async with conn.begin():
                await conn.execute(insert(User).values(id=4, name="dora"))
                1 / 0  # noqa: B018
        ids = (await conn.scalars(select(User.id).order_by(User.id))).all()
        assert ids == [1, 2]
        await conn.rollback()


def test_pgbouncer_option_refuses_what_pgbouncer_refuses() -> None:
    # what it sets is tested against a real PgBouncer in tests/topology/test_pgbouncer.py
    with pytest.raises(sa_exc.ArgumentError, match="options"):
        async_orm.create_async_engine(
            "postgresql+psycopg://app@127.0.0.1:6432/app",
            pgbouncer=True,
            connect_args={"options": "-csearch_path=x"},
        )
    with pytest.raises(sa_exc.ArgumentError, match=r"postgresql\+psycopg"):
        async_orm.create_async_engine("sqlite://", pgbouncer=True)
