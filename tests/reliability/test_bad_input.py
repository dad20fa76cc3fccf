"""Bad input: each mistake gives a clear error of the type SQLAlchemy itself
raises for it, and the session (or connection) works again after ``rollback()``.

Where async_orm just runs SQLAlchemy, the error must be SQLAlchemy's own, with
the same message as a plain sync Session gives for the same call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import async_orm
from async_orm import _worker, exc
from tests.models import Address, Base, User
from tests.reliability.conftest import EngineFactory

pytestmark = pytest.mark.reliability

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


@pytest.fixture
async def models_engine(make_engine: EngineFactory) -> async_orm.AsyncEngine:
    """An engine with tests/models.py's tables; SQLite enforces foreign keys."""
    engine = await make_engine(pool_size=2, max_overflow=0)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine.sync_engine, "connect")
        def foreign_keys_on(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.execute("pragma foreign_keys=on")

        await engine.dispose()  # reconnect with the pragma
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


@pytest.fixture
def maker(models_engine: async_orm.AsyncEngine) -> Maker:
    return async_orm.async_sessionmaker(models_engine, expire_on_commit=False)


def sync_error(fn: Callable[[Session], Any]) -> BaseException:
    """The error a plain sync Session (SQLite in memory) raises for ``fn``."""
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            fn(session)
    except Exception as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("the sync Session raised nothing")


async def assert_session_recovers(session: async_orm.AsyncSession) -> None:
    await session.rollback()
    assert await session.scalar(select(sa.func.count()).select_from(User)) == 0
    session.add(User(name="after"))
    await session.commit()
    assert await session.scalar(select(User.name)) == "after"


# --------------------------------------------------------------------------
# URLs


@pytest.mark.parametrize(
    ("url", "expected", "says"),
    [
        ("not a url", sa_exc.ArgumentError, "Could not parse SQLAlchemy URL"),
        ("", sa_exc.ArgumentError, "Could not parse SQLAlchemy URL"),
        ("nosuchdb://x/y", sa_exc.NoSuchModuleError, "nosuchdb"),
        ("postgresql+nosuchdriver://u@h/d", sa_exc.NoSuchModuleError, "nosuchdriver"),
        # SQLAlchemy itself raises ValueError for a port that is not a number
        ("postgresql+psycopg://u:pw@h:notaport/d", ValueError, "notaport"),
    ],
)
def test_malformed_url_raises_what_create_engine_raises(
    url: str, expected: type[BaseException], says: str
) -> None:
    with pytest.raises(expected) as sync_caught:
        sa.create_engine(url)
    with pytest.raises(expected, match=says) as caught:
        async_orm.create_async_engine(url)
    assert type(caught.value) is type(sync_caught.value)
    assert str(caught.value) == str(sync_caught.value)


def test_unreachable_database_fails_on_first_use_with_operational_error() -> None:
    async def use() -> None:
        engine = async_orm.create_async_engine("sqlite:////nonexistent-dir/x/y.db")
        try:
            async with async_orm.AsyncSession(engine) as session:
                await session.execute(text("select 1"))
        finally:
            await engine.dispose()

    with pytest.raises(sa_exc.OperationalError, match="unable to open database file"):
        asyncio.run(use())


UNREACHABLE = {
    "sqlite": "sqlite:////nonexistent-dir/x/y.db",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/test",  # nothing listens on 1
}


@pytest.mark.parametrize("kind", sorted(UNREACHABLE))
@pytest.mark.parametrize("how", ["connect", "begin"])
async def test_failed_connect_releases_its_worker_slot(kind: str, how: str) -> None:
    """A connect that fails gives back the worker slot and thread it took: with a
    pool of one, every attempt gets the connection error, never a slot timeout."""
    engine = async_orm.create_async_engine(
        UNREACHABLE[kind], pool_size=1, max_overflow=0, worker_timeout=0.5
    )
    opener = engine.connect if how == "connect" else engine.begin
    busy_before = _worker.pool.stats()["busy"]
    try:
        for attempt in range(3):
            with pytest.raises(sa_exc.DBAPIError) as caught:
                async with opener():
                    pass
            assert not isinstance(caught.value, exc.WorkerSlotTimeout), attempt
            assert engine._limiter.in_use == 0, f"attempt {attempt} left its slot taken"
            assert _worker.pool.stats()["busy"] == busy_before, "a worker is still held"
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "sync_url"),
    [
        ("postgresql+asyncpg://scott@localhost/test", "postgresql+psycopg://scott@localhost/test"),
        (
            "postgresql+psycopg_async://scott@localhost/test",
            "postgresql+psycopg://scott@localhost/test",
        ),
        ("sqlite+aiosqlite:///file.db", "sqlite:///file.db"),
        ("mysql+aiomysql://root@localhost/test", "mysql+pymysql://root@localhost/test"),
        ("mysql+asyncmy://root@localhost/test", "mysql+pymysql://root@localhost/test"),
    ],
)
def test_async_driver_url_is_refused_naming_the_sync_url(url: str, sync_url: str) -> None:
    with pytest.raises(exc.AsyncDriverURLError) as caught:
        async_orm.create_async_engine(url)
    assert isinstance(caught.value, sa_exc.ArgumentError)
    assert sync_url in str(caught.value)
    with pytest.raises(exc.AsyncDriverURLError):
        async_orm.create_async_pool_from_url(url)


def test_async_engine_refuses_an_async_dialect_engine() -> None:
    sync_engine = sa.create_engine("postgresql+psycopg_async://scott@localhost/test")
    with pytest.raises(exc.AsyncDriverURLError):
        async_orm.AsyncEngine(sync_engine)


@pytest.mark.parametrize("not_an_engine", ["sqlite://", None, 42, object()])
def test_async_engine_of_something_else_is_an_argument_error(not_an_engine: Any) -> None:
    with pytest.raises(sa_exc.ArgumentError):
        async_orm.AsyncEngine(not_an_engine)


# --------------------------------------------------------------------------
# execute() with things that cannot be executed

NOT_EXECUTABLE: list[Any] = [
    "select 1",
    42,
    None,
    User,
    User.__table__,
    User.name,
    object(),
]


@pytest.mark.parametrize("statement", NOT_EXECUTABLE, ids=repr)
async def test_session_execute_of_non_executable_is_sqlalchemys_argument_error(
    maker: Maker, statement: Any
) -> None:
    expected = sync_error(lambda s: s.execute(statement))
    async with maker() as session:
        session.add(User(name="pending"))
        await session.flush()
        with pytest.raises(type(expected)) as caught:
            await session.execute(statement)
        assert isinstance(caught.value, sa_exc.ArgumentError)
        assert str(caught.value) == str(expected)
        for method in (session.scalar, session.scalars):
            with pytest.raises(type(expected)):
                await method(statement)
        await assert_session_recovers(session)


@pytest.mark.parametrize("statement", NOT_EXECUTABLE, ids=repr)
async def test_connection_execute_of_non_executable_is_object_not_executable(
    models_engine: async_orm.AsyncEngine, statement: Any
) -> None:
    async with models_engine.connect() as conn:
        with pytest.raises(sa_exc.ObjectNotExecutableError):
            await conn.execute(statement)
        await conn.rollback()
        assert await conn.scalar(text("select 1")) == 1


async def test_exec_driver_sql_syntax_error_is_programming_or_operational_error(
    models_engine: async_orm.AsyncEngine,
) -> None:
    async with models_engine.connect() as conn:
        with pytest.raises((sa_exc.ProgrammingError, sa_exc.OperationalError)):
            await conn.exec_driver_sql("selec nonsense")
        await conn.rollback()
        assert await conn.scalar(text("select 2")) == 2


async def test_parameter_the_driver_cannot_send_is_a_programming_error(maker: Maker) -> None:
    async with maker() as session:
        with pytest.raises(sa_exc.StatementError) as caught:
            await session.execute(text("select :x"), {"x": object()})
        assert isinstance(caught.value, sa_exc.ProgrammingError), repr(caught.value)
        assert "select" in str(caught.value)  # it names the statement
        await assert_session_recovers(session)


# --------------------------------------------------------------------------
# get() with the wrong identity


@pytest.mark.parametrize(
    ("entity", "ident"),
    [
        (User, (1, 2)),
        (User, {"nope": 1}),
        (object, 1),
        ("User", 1),
    ],
    ids=["too-many-values", "wrong-names", "not-mapped", "a-string"],
)
async def test_get_with_wrong_identity_types_raises_sqlalchemys_error(
    maker: Maker, entity: Any, ident: Any
) -> None:
    expected = sync_error(lambda s: s.get(entity, ident))
    assert isinstance(expected, sa_exc.InvalidRequestError)
    async with maker() as session:
        with pytest.raises(type(expected)) as caught:
            await session.get(entity, ident)
        assert str(caught.value) == str(expected)
        with pytest.raises(type(expected)):
            await session.get_one(entity, ident)
        await assert_session_recovers(session)


async def test_get_with_a_string_for_an_integer_key(maker: Maker, backend: str) -> None:
    async with maker() as session:
        if backend == "postgresql":
            # PostgreSQL refuses the comparison, and the transaction is aborted
            with pytest.raises(sa_exc.DataError, match="invalid input syntax"):
                await session.get(User, "abc")
            with pytest.raises(sa_exc.DBAPIError, match="current transaction is aborted"):
                await session.execute(text("select 1"))
        else:
            assert await session.get(User, "abc") is None
        await assert_session_recovers(session)


# --------------------------------------------------------------------------
# constraint violations


async def test_unique_violation_is_integrity_error_and_needs_rollback(maker: Maker) -> None:
    async with maker() as session:
        user = User(name="u")
        session.add_all([Address(email="same@x", user=user), Address(email="same@x", user=user)])
        with pytest.raises(sa_exc.IntegrityError) as caught:
            await session.flush()
        assert "unique" in str(caught.value).lower()
        with pytest.raises(sa_exc.PendingRollbackError):
            await session.execute(select(User))
        with pytest.raises(sa_exc.PendingRollbackError):
            await session.commit()
        await assert_session_recovers(session)


async def test_unique_violation_across_sessions_leaves_the_first_row(maker: Maker) -> None:
    async with maker.begin() as session:
        session.add(Address(email="taken@x", user=User(name="first")))
    async with maker() as session:
        session.add(Address(email="taken@x", user=User(name="second")))
        with pytest.raises(sa_exc.IntegrityError):
            await session.commit()
        await session.rollback()
        names = (await session.scalars(select(User.name))).all()
        assert names == ["first"]


async def test_foreign_key_violation_is_integrity_error_and_rollback_recovers(
    maker: Maker,
) -> None:
    async with maker() as session:
        session.add(Address(email="orphan@x", user_id=999_999))
        with pytest.raises(sa_exc.IntegrityError) as caught:
            await session.commit()
        assert "foreign key" in str(caught.value).lower()
        await assert_session_recovers(session)


async def test_core_integrity_error_on_a_connection_then_rollback(
    models_engine: async_orm.AsyncEngine,
) -> None:
    async with models_engine.connect() as conn:
        await conn.execute(sa.insert(User), [{"id": 1, "name": "a"}])
        with pytest.raises(sa_exc.IntegrityError):
            await conn.execute(sa.insert(User), [{"id": 1, "name": "again"}])
        await conn.rollback()
        await conn.execute(sa.insert(User), [{"id": 1, "name": "b"}])
        await conn.commit()
        assert (await conn.execute(select(User.name))).scalars().all() == ["b"]


# --------------------------------------------------------------------------
# run_sync raising


class Boom(Exception):
    pass


async def test_run_sync_raising_propagates_the_same_exception(maker: Maker) -> None:
    error = Boom("from the worker")

    def fails(sync_session: Session) -> None:
        sync_session.add(User(name="never"))
        sync_session.flush()
        raise error

    async with maker() as session:
        with pytest.raises(Boom) as caught:
            await session.run_sync(fails)
        assert caught.value is error
        await assert_session_recovers(session)


async def test_run_sync_raising_a_database_error_then_rollback(maker: Maker) -> None:
    def bad_sql(sync_session: Session) -> None:
        sync_session.execute(text("select * from no_such_table"))

    async with maker() as session:
        with pytest.raises((sa_exc.ProgrammingError, sa_exc.OperationalError)) as caught:
            await session.run_sync(bad_sql)
        assert "no_such_table" in str(caught.value)
        await assert_session_recovers(session)


async def test_run_sync_raising_stop_iteration_becomes_runtime_error(maker: Maker) -> None:
    def stops(sync_session: Session) -> None:
        raise StopIteration("done")

    async with maker() as session:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await session.run_sync(stops)
        await assert_session_recovers(session)


async def test_run_sync_with_a_non_callable_is_type_error(maker: Maker) -> None:
    async with maker() as session:
        with pytest.raises(TypeError):
            await session.run_sync(42)  # type: ignore[arg-type]
        await assert_session_recovers(session)


async def test_failed_flush_inside_begin_block_rolls_back_and_session_recovers(
    maker: Maker,
) -> None:
    async with maker() as session:
        with pytest.raises(sa_exc.IntegrityError):
            async with session.begin():
                session.add(Address(email="orphan@x", user_id=424242))
        assert not session.in_transaction()
        await assert_session_recovers(session)
