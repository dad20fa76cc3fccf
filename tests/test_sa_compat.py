"""Every private SQLAlchemy / asyncio name async_orm touches exists where
``async_orm/_sa_compat.py`` says, on the installed SQLAlchemy: one test per
touchpoint, so an upgrade that moves one fails here, by name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, state
from sqlalchemy.pool import QueuePool

import async_orm
from async_orm import _sa_compat


@pytest.mark.parametrize(
    "name", [name for names in _sa_compat.RESULT_INTERNALS.values() for name in names]
)
def test_result_machinery_name_exists(name: str) -> None:
    assert hasattr(sa.engine.Result, name) or name in sa.engine.Result.__annotations__


def test_nothing_listed_is_missing() -> None:
    assert _sa_compat.missing_internals() == []


def test_asyncio_running_loop_probe() -> None:
    assert _sa_compat.get_running_loop() is None

    async def inside() -> Any:
        return _sa_compat.get_running_loop()

    assert asyncio.run(inside()) is not None


def test_queuepool_capacity_and_timeout_are_read_from_the_pool() -> None:
    engine = sa.create_engine(
        "sqlite://", poolclass=QueuePool, pool_size=3, max_overflow=2, pool_timeout=7
    )
    assert _sa_compat.pool_capacity(engine.pool) == 5
    assert _sa_compat.pool_timeout(engine.pool) == 7
    unbounded = sa.create_engine("sqlite://", poolclass=QueuePool, max_overflow=-1)
    assert _sa_compat.pool_capacity(unbounded.pool) is None
    engine.dispose()
    unbounded.dispose()


def test_pool_doors_see_every_checkout_and_every_return(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    seen: list[Any] = []

    def before(pool: Any) -> Any:
        seen.append(("before", pool))
        return "owner"

    def checked_out(pool: Any, owner: Any, record: Any, dbapi_connection: Any) -> None:
        seen.append(("out", owner, record, dbapi_connection))

    def returning(record: Any) -> None:
        seen.append(("back", record))

    doors = (before, checked_out, returning, "_test_marker")
    _sa_compat.wrap_pool_doors(engine.pool, *doors)
    _sa_compat.wrap_pool_doors(engine.pool, *doors)  # idempotent
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
        record = conn.connection._connection_record
        dbapi_connection = conn.connection.dbapi_connection
    assert seen == [
        ("before", engine.pool),
        ("out", "owner", record, dbapi_connection),
        ("back", record),
    ]
    seen.clear()
    raw = engine.raw_connection()
    raw.detach()  # a detached record goes back through the same door
    assert [step[0] for step in seen] == ["before", "out", "back"]
    raw.close()
    engine.dispose()


def test_pool_doors_skip_a_re_checkout_of_the_same_connection() -> None:
    from sqlalchemy.pool import SingletonThreadPool

    engine = sa.create_engine("sqlite://", poolclass=SingletonThreadPool)
    seen: list[str] = []
    _sa_compat.wrap_pool_doors(
        engine.pool,
        lambda pool: "owner",
        lambda *args: seen.append("out"),
        lambda record: seen.append("back"),
        "_test_marker",
    )
    first = engine.raw_connection()
    second = engine.raw_connection()  # the same _ConnectionFairy, checked out again
    second.close()
    first.close()
    assert seen == ["out", "back"]
    engine.dispose()


def test_dialect_io_methods_exist() -> None:
    dialect = sa.create_engine("sqlite://").dialect
    for name in _sa_compat.DIALECT_IO_METHODS:
        assert callable(getattr(dialect, name))


class _Base(DeclarativeBase):
    pass


class Thing(_Base):
    __tablename__ = "sa_compat_things"
    id: Mapped[int] = mapped_column(primary_key=True)


def test_session_methods_shadowed_per_instance_are_used_by_sqlalchemy(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    session = Session(engine)
    calls: list[str] = []

    def spy(name: str) -> Any:
        def make(original: Any) -> Any:
            def wrapper(*args: Any, **kw: Any) -> Any:
                calls.append(name)
                return original(*args, **kw)

            return wrapper

        return make

    _sa_compat.override_methods(
        session,
        {
            name: spy(name)
            for name in (
                _sa_compat.SESSION_EXECUTE,
                "get_bind",
                "flush",
                _sa_compat.SESSION_FLUSH,
                "commit",
            )
        },
    )
    Thing.metadata.create_all(engine)
    session.execute(sa.text("select 1"))
    session.add(Thing(id=1))
    session.commit()  # flushes the pending Thing through self.flush()
    assert calls[0] == _sa_compat.SESSION_EXECUTE  # every ORM statement goes through it
    assert {"get_bind", "flush", _sa_compat.SESSION_FLUSH, "commit"} <= set(calls)
    # flush() goes on to _flush() only when there is something to send
    flushes = calls.count(_sa_compat.SESSION_FLUSH)
    session.flush()
    assert calls.count(_sa_compat.SESSION_FLUSH) == flushes
    assert _sa_compat.session_has_changes(session) is False
    session.close()
    engine.dispose()


def test_inspect_async_session_is_answered_by_async_orm() -> None:
    assert getattr(state, "_async_provider", None) is not None
    assert getattr(state._async_provider, "_async_orm", False)
    assert async_orm.AsyncSession  # the provider is installed at import


async def test_instrumenting_an_engine_keeps_sqlalchemys_fast_path(tmp_path: Any) -> None:
    # any engine-level listener switches every execution to SQLAlchemy's slower
    # with-events path, and a checkout listener every checkout to the pool's
    # reconnect-on-checkout loop; async_orm's instrumentation must add neither
    engine = async_orm.create_async_engine(f"sqlite:///{tmp_path / 'x.db'}")
    async with engine.connect() as conn:
        await conn.execute(sa.text("select 1"))
    assert engine.sync_engine._has_events is False
    assert not engine.sync_engine.pool.dispatch.checkout
    assert not engine.sync_engine.pool.dispatch.checkin
    await engine.dispose()  # the dispose override keeps the pool's doors and slots
    assert engine.sync_engine.pool.__dict__.get("_async_orm_doors")
    assert not engine.sync_engine.pool.dispatch.checkout
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("select 2")) == 2
    await engine.dispose()


def test_an_async_adapted_queue_pool_gets_queue_pools_thread_safe_queue() -> None:
    # QueuePool._queue_class and pool._pool (the queue of a QueuePool instance)
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    assert _sa_compat.THREAD_SAFE_QUEUE is sa.util.queue.Queue

    class Swapped(AsyncAdaptedQueuePool):
        pass

    pool = AsyncAdaptedQueuePool(lambda: None, pool_size=3, use_lifo=True)
    assert type(pool._pool) is sa.util.queue.AsyncAdaptedQueue
    _sa_compat.make_pool_thread_safe(pool, Swapped)
    assert type(pool) is Swapped
    assert type(pool._pool) is sa.util.queue.Queue
    assert (pool._pool.maxsize, pool._pool.use_lifo) == (3, True)
    assert pool.checkedout() == 0 and pool.size() == 3
