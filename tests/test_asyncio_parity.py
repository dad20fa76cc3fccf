"""Behaviours of sqlalchemy.ext.asyncio that SQLAlchemy's own test suite found missing
(issue 15; ``python -m tests.conformance``), each on SQLite and PostgreSQL: the proxy
registry, the bind translation map, ``result.cursor``, ``stream()`` without server-side
cursors, sync engines bound through their AsyncEngine, the asyncio engine's pool rules,
``async_creator=`` refused, an async dialect's statements, and a raw connection
outliving its AsyncConnection."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    NullPool,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

import async_orm
from async_orm import AsyncEngine, AsyncSession, async_scoped_session, async_sessionmaker
from async_orm.base import ReversibleProxy
from async_orm.session import _HAS_21_API
from tests.conftest import dispose_checking_leaks
from tests.models import User

DbUrl = tuple[str, dict[str, Any]]


def _registered() -> int:
    gc.collect()
    return len(ReversibleProxy._proxy_objects)


@pytest.fixture
def empty_registry() -> Iterator[None]:
    """Only this test's fronts in the registry (the others' come back afterwards)."""
    saved = dict(ReversibleProxy._proxy_objects)
    ReversibleProxy._proxy_objects.clear()
    yield
    ReversibleProxy._proxy_objects.update(saved)


# -- one async front per sync object, weakly held -----------------------------------


@pytest.mark.usefixtures("empty_registry")
async def test_registry_entries_go_with_their_async_fronts(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine
    ReversibleProxy._proxy_objects.clear()
    front = AsyncEngine(sync_engine)
    assert _registered() == 1
    assert AsyncEngine._retrieve_proxy_for_target(sync_engine) is front
    async with front.connect() as conn:
        assert _registered() == 2
        async with conn.begin() as trans:
            assert _registered() == 3
            assert conn.get_transaction() is trans
        del trans
    del conn
    assert _registered() == 1
    session = AsyncSession(front)
    assert _registered() == 2
    assert async_orm.async_session(session.sync_session) is session
    del session
    assert _registered() == 1
    del front
    assert _registered() == 0
    # the sync engine outlived its front: a new one is made for it
    assert AsyncEngine._retrieve_proxy_for_target(sync_engine, regenerate=False) is None
    assert AsyncEngine._retrieve_proxy_for_target(sync_engine).sync_engine is sync_engine


async def test_close_all_sessions_closes_every_open_session(engine: AsyncEngine) -> None:
    first, second = AsyncSession(engine), AsyncSession(engine)
    await first.execute(select(1))
    await second.execute(select(1))
    assert first.in_transaction() and second.in_transaction()
    await async_orm.close_all_sessions()
    assert not first.in_transaction() and not second.in_transaction()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- the bind translation map -------------------------------------------------------


@pytest.mark.skipif(not _HAS_21_API, reason="bind_mapper()/bind_table() are SQLAlchemy 2.1's")
@pytest.mark.parametrize("how", ["bind", "bind_mapper", "bind_table"])
async def test_translate_binds_is_rebuilt_when_the_binds_change(
    engine: AsyncEngine, db_url: DbUrl, how: str
) -> None:
    url, kwargs = db_url
    other = async_orm.create_async_engine(url, **kwargs)
    session = AsyncSession(bind=engine)
    before = session._translate_binds
    assert session._translate_binds is before
    assert before == {engine: engine.sync_engine, engine.sync_engine: engine}
    if how == "bind":
        session.bind = other
    elif how == "bind_mapper":
        session.bind_mapper(User, other)
    else:
        session.bind_table(User.__table__, other)  # type: ignore[arg-type]
    after = session._translate_binds
    assert after is not before
    assert after[other] is other.sync_engine and after[other.sync_engine] is other
    if how != "bind":
        assert session.get_bind(User) is other.sync_engine
        assert session.get_async_bind(User) is other
    await session.close()
    await dispose_checking_leaks([other])


# -- result.cursor of execute() -----------------------------------------------------


async def test_execute_result_keeps_its_closed_cursor(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        result = await conn.execute(select(text("1 AS one")))
        assert result.cursor is not None
        await conn.run_sync(lambda _: result.cursor.close())  # closed already: a no-op
        assert result.all() == [(1,)]
        inserted = await conn.execute(text("CREATE TABLE t_cursor (x INTEGER)"))
        assert inserted.cursor is None  # no rows: SQLAlchemy closed it, as for async drivers


# -- stream() needs server-side cursors (or SQLite) -------------------------------------


async def test_stream_is_refused_without_server_side_cursors(
    engine: AsyncEngine, backend: str
) -> None:
    dialect = engine.sync_engine.dialect
    saved = dialect.supports_server_side_cursors
    dialect.supports_server_side_cursors = False
    try:
        async with engine.connect() as conn:
            if backend == "sqlite":  # sqlite3 steps through rows as they are fetched
                assert await (await conn.stream(select(1))).all() == [(1,)]
            else:
                for call in (conn.stream, conn.stream_scalars):
                    with pytest.raises(sa_exc.InvalidRequestError, match="server side cursors"):
                        await call(select(1))
                assert (await conn.execute(select(1))).all() == [(1,)]
    finally:
        dialect.supports_server_side_cursors = saved


# -- an AsyncSession takes async binds; a session factory wraps sync engines -------------


async def test_async_session_binds_a_sync_engine_through_its_async_engine(
    engine: AsyncEngine,
) -> None:
    sync_engine = engine.sync_engine
    async with AsyncSession(bind=sync_engine) as session:
        assert session.bind is engine  # the engine's one front, not a new one
        assert (await session.execute(select(1))).scalar() == 1
    async with AsyncSession(binds={User: sync_engine}) as session:
        assert session.binds[User] is engine if not _HAS_21_API else True
        if _HAS_21_API:
            assert session.get_async_bind(User) is engine
        assert (await session.execute(select(User))).all() == []
    with async_orm.allow_loop_io(), sync_engine.connect() as sync_conn:
        session = AsyncSession(bind=sync_conn)  # a sync connection is used as it is
        assert session.bind is sync_conn
    with pytest.raises(sa_exc.ArgumentError, match="AsyncEngine, AsyncConnection or a sync"):
        AsyncSession(bind="postgresql://")  # type: ignore[arg-type]


async def test_session_factory_wraps_a_sync_engine_once(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine
    maker = async_sessionmaker(sync_engine, expire_on_commit=False)
    other = async_sessionmaker(binds={User: sync_engine})
    async with maker() as first, maker() as second:
        assert first.bind is engine and second.bind is engine  # the engine's one front
        assert (await first.execute(select(1))).scalar() == 1
    async with other() as session:
        assert session.get_async_bind(User) is engine if _HAS_21_API else True
        assert (await session.execute(select(User))).all() == []
    maker.configure(bind=sync_engine)
    assert maker.kw["bind"] is engine


# -- the pool of an asyncio engine --------------------------------------------------------


async def _two_at_once(engine: AsyncEngine) -> list[int]:
    async def one() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(select(1))).scalar_one())

    return list(await asyncio.gather(one(), one()))


async def test_default_pool_is_a_thread_safe_async_adapted_queue_pool(db_url: DbUrl) -> None:
    url, kwargs = db_url
    engine = async_orm.create_async_engine(url, pool_size=2, max_overflow=0, **kwargs)
    pool = engine.pool
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert type(pool._pool) is QueuePool._queue_class  # threading, not asyncio
    assert await _two_at_once(engine) == [1, 1]
    await engine.dispose()
    assert type(engine.pool) is type(pool)  # recreated as the same class
    assert await _two_at_once(engine) == [1, 1]
    await dispose_checking_leaks([engine])


@pytest.mark.parametrize("instantiate", [False, True])
async def test_async_adapted_queue_pool_is_accepted(db_url: DbUrl, instantiate: bool) -> None:
    url, kwargs = db_url
    if instantiate:
        creator = sa.create_engine(url, **kwargs).pool._creator
        options: dict[str, Any] = {"pool": AsyncAdaptedQueuePool(creator, timeout=10)}
    else:
        options = {"poolclass": AsyncAdaptedQueuePool, "pool_timeout": 10, **kwargs}
    engine = async_orm.create_async_engine(url, **options)
    assert isinstance(engine.pool, AsyncAdaptedQueuePool)
    assert engine.pool.timeout() == 10  # type: ignore[attr-defined]
    assert await _two_at_once(engine) == [1, 1]
    await dispose_checking_leaks([engine])


@pytest.mark.parametrize("pool_cls", [QueuePool, SingletonThreadPool])
@pytest.mark.parametrize("instantiate", [False, True])
def test_thread_bound_pools_are_refused(
    db_url: DbUrl, pool_cls: type[Any], instantiate: bool
) -> None:
    url, kwargs = db_url
    options: dict[str, Any] = (
        {"pool": pool_cls(lambda: None)} if instantiate else {"poolclass": pool_cls, **kwargs}
    )
    with pytest.raises(
        sa_exc.ArgumentError, match=f"Pool class {pool_cls.__name__} cannot be used with asyncio"
    ) as refused:
        async_orm.create_async_engine(url, **options)
    assert "AsyncEngine(create_engine(url" in str(refused.value)  # what to do instead
    with pytest.raises(sa_exc.ArgumentError, match="cannot be used with asyncio"):
        async_orm.create_async_pool_from_url(url, poolclass=pool_cls)


@pytest.mark.parametrize("pool_cls", [NullPool, StaticPool])
async def test_other_pools_are_used_as_given(db_url: DbUrl, pool_cls: type[Any]) -> None:
    url, kwargs = db_url
    engine = async_orm.create_async_engine(url, poolclass=pool_cls, **kwargs)
    assert type(engine.pool) is pool_cls
    async with engine.connect() as conn:
        assert (await conn.execute(select(1))).scalar() == 1
    await engine.dispose()


def test_a_used_async_adapted_pool_is_refused(db_url: DbUrl) -> None:
    url, kwargs = db_url
    pool = AsyncAdaptedQueuePool(sa.create_engine(url, **kwargs).pool._creator)
    assert pool._inc_overflow()  # what a checkout does first: one connection out
    with pytest.raises(sa_exc.ArgumentError, match="already handed out connections"):
        async_orm.create_async_engine(url, pool=pool)


def test_create_async_pool_from_url_follows_the_engine_rules(db_url: DbUrl) -> None:
    url, kwargs = db_url
    pool = async_orm.create_async_pool_from_url(url, **kwargs)
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert type(pool._pool) is QueuePool._queue_class  # type: ignore[attr-defined]
    pool.dispose()
    with pytest.raises(async_orm.exc.AsyncDriverURLError):
        async_orm.create_async_pool_from_url("postgresql+asyncpg://u@h/db")


# -- async_creator= -------------------------------------------------------------------


def test_async_creator_is_refused_naming_creator(db_url: DbUrl) -> None:
    url, kwargs = db_url

    async def async_creator() -> Any:
        raise AssertionError("never called")

    with pytest.raises(sa_exc.ArgumentError, match=r"pass a sync connection factory as creator="):
        async_orm.create_async_engine(url, async_creator=async_creator, **kwargs)
    with pytest.raises(sa_exc.ArgumentError, match="Can only specify one of"):
        async_orm.create_async_engine(url, creator=lambda: None, async_creator=async_creator)
    with pytest.raises(sa_exc.ArgumentError, match="creator="):
        async_orm.create_async_pool_from_url(url, async_creator=async_creator)


# -- an async dialect's statements -------------------------------------------------------


async def test_statements_on_an_async_dialect_require_await(db_url: DbUrl) -> None:
    url, kwargs = db_url
    sync_engine = sa.create_engine(url, **kwargs)
    sync_engine.dialect.is_async = True  # as a dialect of an async driver says
    engine = AsyncEngine(sync_engine)
    async with engine.connect() as conn:
        for run in (
            lambda: conn.execute(select(1)),
            lambda: conn.exec_driver_sql("SELECT 1"),
            lambda: conn.stream(select(1)),
        ):
            with pytest.raises(sa_exc.AwaitRequired, match="says it is async"):
                await run()
        # code that runs the driver synchronously, as run_sync() does, is the way
        assert await conn.run_sync(lambda c: c.scalar(select(1))) == 1
    await dispose_checking_leaks([engine])


# -- a raw connection is the caller's -----------------------------------------------------


async def test_raw_connection_outlives_its_unclosed_async_connection(
    db_url: DbUrl,
) -> None:
    url, kwargs = db_url
    engine = async_orm.create_async_engine(url, pool_size=1, max_overflow=0, **kwargs)

    async def leak_the_connection() -> Any:
        conn = await engine.connect()
        await conn.begin()
        await conn.execute(select(1))
        return await conn.get_raw_connection()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = await leak_the_connection()
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert raw.is_valid and raw.dbapi_connection is not None  # not closed under us
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    with async_orm.allow_loop_io():
        raw.close()  # the caller returns it
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # the worker slot came back too: the one-slot engine connects again
    async with engine.connect() as conn:
        assert (await conn.execute(select(1))).scalar() == 1
    await dispose_checking_leaks([engine])


# -- the scoped session's binds --------------------------------------------------------


async def test_scoped_session_proxies_binds(engine: AsyncEngine) -> None:
    scoped = async_scoped_session(
        async_sessionmaker(binds={User: engine}), scopefunc=asyncio.current_task
    )
    assert scoped.binds == scoped().binds
    assert User in scoped.binds and set(scoped.binds.values()) == {engine}
    await scoped.remove()


def test_plain_session_class_stays_plain(engine: AsyncEngine) -> None:
    session = AsyncSession(engine, sync_session_class=Session)
    assert session.sync_session_class is Session and type(session.sync_session) is Session
