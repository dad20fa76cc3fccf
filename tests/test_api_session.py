"""Behaviour of every public method of AsyncSession, on SQLite and PostgreSQL.

Each test is named after what a user of ``sqlalchemy.ext.asyncio`` expects the
method to do, and checks it through async_orm.  Methods SQLAlchemy added in
2.1 (``merge_all``, ``delete_all``, ``get_async_bind``, ``bind_mapper``,
``bind_table``, ``binds``, ``execution_options``) are checked on 2.1 and
checked *absent* on 2.0, as in ``sqlalchemy.ext.asyncio``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import bindparam, event, func, insert, inspect, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.util import immutabledict

import async_orm
from async_orm import AsyncSession, _worker
from async_orm import exc as async_exc
from tests.conftest import StatementThreads
from tests.models import Address, User

Maker = async_orm.async_sessionmaker[AsyncSession]

HAS_21 = hasattr(Session, "delete_all")
NOT_ON_20 = "SQLAlchemy 2.0's Session has no such method, so neither does AsyncSession"


@pytest.fixture
async def seeded(maker: Maker) -> Maker:
    """Users ann (1, with two addresses) and bob (2)."""
    async with maker.begin() as session:
        session.add_all(
            [
                User(
                    id=1,
                    name="ann",
                    addresses=[Address(id=1, email="a1@x"), Address(id=2, email="a2@x")],
                ),
                User(id=2, name="bob"),
            ]
        )
    return maker


async def _rename_elsewhere(engine: async_orm.AsyncEngine, user_id: int, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(User).where(User.id == user_id).values(name=name))


# -- statements ------------------------------------------------------------------


async def test_execute_returns_a_buffered_result_and_passes_params_and_options(
    seeded: Maker,
) -> None:
    async with seeded() as session:
        result = await session.execute(
            select(User.name).where(User.id == bindparam("uid")), {"uid": 2}
        )
        session.autoflush = False
        ann = await session.get(User, 1)
        assert ann is not None
        ann.name = "local change"
        await session.execute(
            select(User).where(User.id == 1), execution_options={"populate_existing": True}
        )
        assert ann.name == "ann"  # populate_existing reached the sync Session
        rows = await session.execute(select(User.id), bind_arguments={"mapper": inspect(User)})
        assert sorted(rows.scalars()) == [1, 2]
    # buffered on the worker: readable after close, with no database I/O
    assert result.all() == [("bob",)]


async def test_scalar_and_scalars(seeded: Maker) -> None:
    async with seeded() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 2
        assert await session.scalar(select(User.name).where(User.id == 99)) is None
        users = await session.scalars(select(User).order_by(User.id))
        assert [u.name for u in users] == ["ann", "bob"]
        names = await session.scalars(
            select(User.name).where(User.id == bindparam("uid")), {"uid": 1}
        )
        assert names.all() == ["ann"]
        session.autoflush = False
        ann = await session.get_one(User, 1)
        ann.name = "local change"
        options = {"populate_existing": True}
        await session.scalars(select(User).where(User.id == 1), execution_options=options)
        assert ann.name == "ann"
        ann.name = "local change"
        assert await session.scalar(select(User), execution_options=options) is ann
        assert ann.name == "ann"


async def test_get_uses_the_identity_map_and_honours_its_options(
    seeded: Maker, engine: async_orm.AsyncEngine, statement_threads: StatementThreads
) -> None:
    async with seeded() as session:
        ann = await session.get(User, 1, options=[selectinload(User.addresses)])
        assert ann is not None
        assert [a.email for a in ann.addresses] == ["a1@x", "a2@x"]  # loaded, no lazy load
        statement_threads.records.clear()
        assert await session.get(User, 1) is ann
        assert statement_threads.records == []  # identity map hit: no SQL
        assert await session.get(User, 99) is None
        await _rename_elsewhere(engine, 1, "ann2")
        statement_threads.records.clear()
        again = await session.get(User, 1, populate_existing=True, with_for_update=True)
        assert again is ann and ann.name == "ann2"
        if engine.dialect.name == "postgresql":
            assert any("FOR UPDATE" in s for _, s in statement_threads.records)
        token = await session.get(User, 2, identity_token=None, execution_options={})
        assert token is not None and token.name == "bob"


async def test_get_one_raises_when_missing(seeded: Maker) -> None:
    async with seeded() as session:
        assert (await session.get_one(User, 2)).name == "bob"
        with pytest.raises(sa_exc.NoResultFound):
            await session.get_one(User, 99)


async def test_refresh_reloads_all_or_named_attributes_optionally_for_update(
    seeded: Maker, engine: async_orm.AsyncEngine, statement_threads: StatementThreads
) -> None:
    async with seeded() as session:
        ann = await session.get(User, 1)
        assert ann is not None
        await _rename_elsewhere(engine, 1, "renamed")
        assert ann.name == "ann"
        await session.refresh(ann)
        assert ann.name == "renamed"

        await _rename_elsewhere(engine, 1, "again")
        await session.refresh(ann, ["addresses"])  # only the collection
        assert ann.name == "renamed"
        assert [a.id for a in ann.addresses] == [1, 2]
        await session.refresh(ann, attribute_names=["name"])
        assert ann.name == "again"

        statement_threads.records.clear()
        await session.refresh(ann, with_for_update=True)
        if engine.dialect.name == "postgresql":
            assert any("FOR UPDATE" in s for _, s in statement_threads.records)
        else:
            assert statement_threads.records  # SQLite has no FOR UPDATE; it still reloads


async def test_merge_copies_state_onto_the_persistent_instance(seeded: Maker) -> None:
    async with seeded() as session:
        merged = await session.merge(User(id=2, name="bobby"))
        assert merged in session and merged.name == "bobby"
        assert await session.get(User, 2) is merged
        await session.commit()
    async with seeded() as session:
        assert (await session.get_one(User, 2)).name == "bobby"
        detached = User(id=1, name="ann")
        merged = await session.merge(detached, load=True, options=[selectinload(User.addresses)])
        assert merged is not detached
        assert [a.id for a in merged.addresses] == [1, 2]
    async with seeded() as session:
        clean = await session.get_one(User, 2)
        session.expunge(clean)
        no_load = await session.merge(clean, load=False)
        assert no_load.name == "bobby" and no_load not in session.dirty


async def test_merge_all_and_delete_all_exist_exactly_where_sqlalchemy_has_them(
    seeded: Maker,
) -> None:
    if not HAS_21:
        assert not hasattr(AsyncSession, "merge_all"), NOT_ON_20
        assert not hasattr(AsyncSession, "delete_all"), NOT_ON_20
        return
    async with seeded() as session:
        merged = await session.merge_all([User(id=2, name="B"), User(id=3, name="C")])
        assert [u.name for u in merged] == ["B", "C"]
        assert all(u in session for u in merged)
        await session.commit()
        users = (await session.scalars(select(User).where(User.id > 1))).all()
        await session.delete_all(users)
        assert session.deleted  # (cascades autoflush, so some may be flushed already)
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(User)) == 1


async def test_delete_and_flush(seeded: Maker) -> None:
    async with seeded() as session:
        bob = await session.get_one(User, 2)
        await session.delete(bob)
        assert bob in session.deleted
        await session.flush()
        assert bob not in session.deleted
        assert await session.get(User, 2) is None
        await session.rollback()
    async with seeded() as session:
        one, two = User(id=10, name="ten"), User(id=11, name="eleven")
        session.add_all([one, two])
        if HAS_21:  # deprecated there, as in the sync Session
            with pytest.warns(sa_exc.SADeprecationWarning, match="objects"):
                await session.flush([one])  # only the objects named
        else:
            await session.flush([one])
        assert one not in session.new and two in session.new
        await session.commit()


async def test_add_add_all_and_the_collections_that_track_them(seeded: Maker) -> None:
    async with seeded() as session:
        carl = User(id=3, name="carl")
        session.add(carl)
        session.add_all([User(id=4, name="dora"), User(id=5, name="emil")])
        assert carl in session and len(session.new) == 3
        assert not session.dirty and not session.deleted
        ann = await session.get_one(User, 1)
        ann.name = "ANN"
        assert ann in session.dirty
        assert inspect(ann).key in session.identity_map
        assert set(session) >= {carl, ann}  # __iter__ over every instance
        with pytest.raises(orm_exc.UnmappedInstanceError):
            session.add(object())
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(User)) == 5


async def test_expire_and_expire_all_make_attributes_reload(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    async with seeded() as session:
        ann = await session.get_one(User, 1)
        bob = await session.get_one(User, 2)
        await _rename_elsewhere(engine, 1, "fresh")
        session.expire(ann, ["name"])
        assert inspect(ann).expired_attributes == {"name"}
        with pytest.raises(async_exc.EventLoopIOError):
            _ = ann.name  # a refresh would be I/O on the event loop
        assert await ann.awaitable_attrs.name == "fresh"
        session.expire_all()
        assert "name" in inspect(bob).expired_attributes
        assert "name" in inspect(ann).expired_attributes
        await session.refresh(bob)
        assert bob.name == "bob"
        session.expire(bob)  # every attribute
        assert {"id", "name"} <= inspect(bob).expired_attributes


async def test_expunge_and_expunge_all_detach_instances(seeded: Maker) -> None:
    async with seeded() as session:
        ann = await session.get_one(User, 1)
        bob = await session.get_one(User, 2)
        session.expunge(ann)
        assert ann not in session and inspect(ann).detached
        assert bob in session
        session.expunge_all()
        assert bob not in session and list(session) == []


async def test_is_modified_with_and_without_collections(seeded: Maker) -> None:
    async with seeded() as session:
        bob = await session.get_one(User, 2, options=[selectinload(User.addresses)])
        assert session.is_modified(bob) is False
        bob.addresses.append(Address(id=3, email="b@x"))
        assert session.is_modified(bob) is True
        assert session.is_modified(bob, include_collections=False) is False
        bob.name = "robert"
        assert session.is_modified(bob, include_collections=False) is True


# -- transactions ------------------------------------------------------------------


async def test_transaction_state_accessors(seeded: Maker) -> None:
    async with seeded() as session:
        assert session.in_transaction() is False
        assert session.get_transaction() is None
        await session.execute(select(1))  # autobegin
        assert session.in_transaction() is True
        trans = session.get_transaction()
        assert isinstance(trans, async_orm.AsyncSessionTransaction)
        assert trans.sync_transaction is session.sync_session.get_transaction()
        assert trans.is_active and not trans.nested and trans.session is session
        assert session.in_nested_transaction() is False
        assert session.get_nested_transaction() is None
        nested = await session.begin_nested()
        assert session.in_nested_transaction() is True
        current = session.get_nested_transaction()
        assert current is not None and current.nested
        assert current.sync_transaction is nested.sync_transaction
        assert current == nested
        await nested.commit()
        assert session.in_nested_transaction() is False
        await session.commit()
        assert session.in_transaction() is False


async def test_begin_commits_on_success_and_rolls_back_on_error(seeded: Maker) -> None:
    async with seeded() as session:
        async with session.begin():
            session.add(User(id=3, name="carl"))
        assert session.in_transaction() is False
        with pytest.raises(ZeroDivisionError):
            async with session.begin():
                session.add(User(id=4, name="dora"))
                await session.flush()
                1 / 0  # noqa: B018
        trans = await session.begin()  # the awaitable form just begins
        assert session.in_transaction() and trans.is_active
        ids = (await session.scalars(select(User.id).order_by(User.id))).all()
        assert ids == [1, 2, 3]
        async with session.begin_nested():
            session.add(User(id=5, name="emil"))
        with pytest.raises(ZeroDivisionError):
            async with session.begin_nested():
                session.add(User(id=6, name="fay"))
                await session.flush()
                1 / 0  # noqa: B018
        await trans.commit()
    async with seeded() as session:
        ids = (await session.scalars(select(User.id).order_by(User.id))).all()
        assert ids == [1, 2, 3, 5]


async def test_commit_and_rollback(seeded: Maker) -> None:
    async with seeded() as session:
        session.add(User(id=3, name="carl"))
        await session.rollback()
        session.add(User(id=4, name="dora"))
        await session.commit()
        ids = (await session.scalars(select(User.id).order_by(User.id))).all()
        assert ids == [1, 2, 4]


async def test_connection_joins_the_session_transaction_on_the_session_thread(
    seeded: Maker, statement_threads: StatementThreads
) -> None:
    async with seeded() as session:
        conn = await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        assert isinstance(conn, async_orm.AsyncConnection)
        assert conn.sync_connection is session.sync_session.connection()
        assert await conn.get_isolation_level() == "SERIALIZABLE"
        await conn.execute(insert(User).values(id=3, name="carl"))
        assert await session.scalar(select(User.name).where(User.id == 3)) == "carl"
        session_thread = await session.run_sync(lambda s: threading.get_ident())
        assert statement_threads.threads == {session_thread}
        again = await session.connection(bind_arguments={"mapper": inspect(User)})
        assert again is conn  # one AsyncConnection per sync connection, as in SQLAlchemy
        await session.rollback()
        assert await session.scalar(select(User.name).where(User.id == 3)) is None
        after = await session.connection()
        assert after is not conn and after.sync_connection is not conn.sync_connection


async def test_run_sync_runs_a_sync_function_with_the_sync_session(seeded: Maker) -> None:
    def rename(sync: Session, user_id: int, *, name: str) -> str:
        user = sync.get_one(User, user_id)
        user.name = name
        _ = user.addresses  # a lazy load is fine on the worker
        return threading.current_thread().name

    async with seeded() as session:
        thread_name = await session.run_sync(rename, 2, name="robert")
        assert thread_name.startswith("async_orm-worker-")
        assert thread_name != threading.current_thread().name
        await session.commit()
        assert await session.scalar(select(User.name).where(User.id == 2)) == "robert"


# -- binds ------------------------------------------------------------------------


async def test_get_bind_and_bind(maker: Maker, engine: async_orm.AsyncEngine) -> None:
    async with maker() as session:
        assert session.bind is engine
        assert session.get_bind() is engine.sync_engine
        assert session.get_bind(User) is engine.sync_engine
        assert session.get_bind(mapper=inspect(User), clause=select(User)) is engine.sync_engine
        if HAS_21:
            assert dict(session.binds) == {}  # always a mapping on 2.1
    unbound = AsyncSession()
    with pytest.raises(sa_exc.UnboundExecutionError):
        unbound.get_bind()
    await unbound.close()


async def test_binds_route_entities_to_their_engine(engine: async_orm.AsyncEngine) -> None:
    session = AsyncSession(binds={User: engine, Address: engine})
    async with session:
        assert session.get_bind(User) is engine.sync_engine
        session.add(User(id=1, name="ann"))
        await session.commit()
        assert await session.scalar(select(User.name)) == "ann"
        if HAS_21:
            assert session.binds and all(b is engine for b in session.binds.values())
        else:
            assert session.binds == {User: engine, Address: engine}


async def test_bind_setter_bind_mapper_bind_table_and_get_async_bind(
    maker: Maker, engine: async_orm.AsyncEngine, db_url: tuple[str, dict[str, Any]]
) -> None:
    if not HAS_21:
        for name in ("bind_mapper", "bind_table", "get_async_bind"):
            assert not hasattr(AsyncSession, name), NOT_ON_20
        return
    url, kwargs = db_url
    other = async_orm.create_async_engine(url, **kwargs)
    try:
        async with maker() as session:
            assert session.get_async_bind() is engine
            assert session.get_async_bind(User) is engine
            session.bind = other
            assert session.bind is other
            assert session.get_bind() is other.sync_engine
            session.bind_mapper(User, engine)
            session.bind_table(Address.__table__, engine)
            assert session.get_bind(User) is engine.sync_engine
            assert session.get_async_bind(User) is engine
            assert session.get_async_bind(clause=Address.__table__.select()) is engine
            assert session.get_async_bind(bind=other) is other
            assert engine in set(session.binds.values())
            assert await session.scalar(select(func.count()).select_from(User)) == 0
            # a sync engine set behind the AsyncSession's back has no async counterpart
            stranger = sa.create_engine("sqlite://")
            session.sync_session.bind_mapper(Address, stranger)
            with pytest.raises(async_exc.AsyncBindNotFound, match="bind_mapper"):
                session.get_async_bind(Address)
            stranger.dispose()
    finally:
        await other.dispose()


async def test_execution_options_apply_to_every_statement(seeded: Maker) -> None:
    if not HAS_21:
        assert not hasattr(AsyncSession, "execution_options"), NOT_ON_20
        return
    async with seeded(autoflush=False) as session:
        assert dict(session.execution_options) == {}
        ann = await session.get_one(User, 1)
        ann.name = "local"
        session.execution_options = immutabledict({"populate_existing": True})
        assert session.sync_session.execution_options == {"populate_existing": True}
        await session.scalars(select(User))
        assert ann.name == "ann"


# -- classmethods, lifecycle -------------------------------------------------------


async def test_identity_key_and_object_session(seeded: Maker) -> None:
    assert AsyncSession.identity_key(User, 1) == (User, (1,), None)
    async with seeded() as session:
        ann = await session.get_one(User, 1)
        assert AsyncSession.identity_key(instance=ann) == (User, (1,), None)
        assert session.identity_key(User, (1,), identity_token="t") == (User, (1,), "t")
        assert AsyncSession.object_session(ann) is session.sync_session
        assert session.object_session(User(name="x")) is None


async def test_close_all_closes_every_session(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    one, two = seeded(), seeded()
    await one.get(User, 1)
    await two.get(User, 2)
    assert engine.pool.checkedout() == 2  # type: ignore[attr-defined]
    with pytest.warns(sa_exc.SADeprecationWarning, match="close_all_sessions"):
        await AsyncSession.close_all()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _worker.pool.stats()["busy"] == 0
    assert list(one) == [] and list(two) == []


async def test_close_and_aclose_release_the_connection_and_the_worker(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    for closer in ("close", "aclose"):
        session = seeded()
        ann = await session.get_one(User, 1)
        assert _worker.pool.stats()["busy"] >= 1
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        await getattr(session, closer)()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert _worker.pool.stats()["busy"] == 0
        assert ann not in session
        assert await session.scalar(select(User.name).where(User.id == 2)) == "bob"  # reusable
        await session.close()


async def test_reset_closes_and_returns_the_session_to_its_initial_state(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    session = seeded()
    ann = await session.get_one(User, 1)
    session.add(User(id=3, name="carl"))
    await session.reset()
    assert ann not in session and not session.new
    assert session.in_transaction() is False
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _worker.pool.stats()["busy"] == 0
    assert await session.scalar(select(func.count()).select_from(User)) == 2
    await session.close()


async def test_invalidate_discards_the_connection_instead_of_pooling_it(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    invalidated: list[Any] = []

    def on_invalidate(dbapi_connection: Any, record: Any, exception: Any) -> None:
        invalidated.append(dbapi_connection)

    event.listen(engine.sync_engine, "invalidate", on_invalidate)
    try:
        session = seeded()
        await session.execute(select(1))
        await session.invalidate()
        assert len(invalidated) == 1
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert _worker.pool.stats()["busy"] == 0
        assert await session.scalar(select(func.count()).select_from(User)) == 2  # reusable
        await session.close()
    finally:
        event.remove(engine.sync_engine, "invalidate", on_invalidate)


async def test_async_with_closes_the_session(seeded: Maker, engine: async_orm.AsyncEngine) -> None:
    async with seeded() as session:
        assert isinstance(session, AsyncSession)
        await session.get(User, 1)
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert list(session) == []


async def test_proxied_session_attributes(seeded: Maker) -> None:
    async with seeded() as session:
        assert isinstance(session.sync_session, Session)
        assert session.sync_session_class is Session
        assert session.is_active is True
        assert session.autoflush is True
        session.autoflush = False
        assert session.sync_session.autoflush is False
        session.autoflush = True
        session.info["request"] = 7
        assert session.sync_session.info == {"request": 7}
        with session.no_autoflush:
            session.add(User(id=3, name="carl"))
            count = await session.scalar(select(func.count()).select_from(User))
            assert count == 2  # no autoflush inside no_autoflush
        assert await session.scalar(select(func.count()).select_from(User)) == 3
        session.identity_map = session.identity_map
        await session.rollback()


async def test_sync_session_class_is_used(engine: async_orm.AsyncEngine) -> None:
    class MySession(Session):
        pass

    session = AsyncSession(engine, sync_session_class=MySession)
    assert isinstance(session.sync_session, MySession)
    await session.close()


# -- AsyncSessionTransaction --------------------------------------------------------


async def test_session_transaction_start_commit_rollback(seeded: Maker) -> None:
    async with seeded() as session:
        trans = session.begin()
        assert trans.sync_transaction is None and not trans.is_active
        with pytest.raises(async_exc.AsyncContextNotStarted, match="await"):
            await trans.commit()
        started = await trans.start()
        assert started is trans and trans.is_active
        session.add(User(id=3, name="carl"))
        nested = session.begin_nested()
        await nested
        assert nested.nested and nested.is_active
        session.add(User(id=4, name="dora"))
        await nested.rollback()
        assert not nested.is_active and trans.is_active
        await trans.commit()
        assert not trans.is_active
        async with session.begin() as entered:
            assert isinstance(entered, async_orm.AsyncSessionTransaction)
            await entered.rollback()
        ids = (await session.scalars(select(User.id).order_by(User.id))).all()
        assert ids == [1, 2, 3]


async def test_session_transaction_connections_and_bound_connection(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    if not HAS_21:
        assert not hasattr(async_orm.AsyncSessionTransaction, "connections"), NOT_ON_20
        assert not hasattr(async_orm.AsyncSessionTransaction, "bound_connection"), NOT_ON_20
        return
    async with seeded() as session:
        trans = await session.begin()
        assert trans.connections == frozenset()
        conn = await session.connection()
        assert trans.connections == frozenset({conn})
        assert all(isinstance(c, async_orm.AsyncConnection) for c in trans.connections)
        assert next(iter(trans.connections)) is conn
        bound = trans.bound_connection(User)
        assert isinstance(bound, async_orm.AsyncConnection) and bound is conn
        assert trans.bound_connection(bind=engine) is conn
        assert await bound.scalar(select(func.count()).select_from(User)) == 2
        await trans.rollback()


# -- async_sessionmaker -------------------------------------------------------------


async def test_sessionmaker_makes_configured_sessions(engine: async_orm.AsyncEngine) -> None:
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False, info={"a": 1})
    assert maker.class_ is AsyncSession
    assert maker.kw["expire_on_commit"] is False and maker.kw["bind"] is engine
    session = maker(info={"b": 2}, autoflush=False)
    assert isinstance(session, AsyncSession)
    assert session.bind is engine
    assert session.info == {"a": 1, "b": 2}
    assert session.autoflush is False and session.sync_session.expire_on_commit is False
    await session.close()
    maker.configure(autoflush=False)
    async with maker() as session:
        assert session.autoflush is False


async def test_sessionmaker_class_makes_subclasses(engine: async_orm.AsyncEngine) -> None:
    class MyAsyncSession(AsyncSession):
        pass

    maker = async_orm.async_sessionmaker(engine, class_=MyAsyncSession)
    assert maker.class_ is MyAsyncSession
    async with maker() as session:
        assert type(session) is MyAsyncSession
    async with maker.begin() as session:
        assert type(session) is MyAsyncSession


async def test_sessionmaker_begin_commits_rolls_back_and_closes(
    maker: Maker, engine: async_orm.AsyncEngine
) -> None:
    async with maker.begin() as session:
        assert session.in_transaction()
        session.add(User(id=1, name="ann"))
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert list(session) == []
    with pytest.raises(ZeroDivisionError):
        async with maker.begin() as session:
            session.add(User(id=2, name="bob"))
            await session.flush()
            1 / 0  # noqa: B018
    async with maker() as session:
        assert (await session.scalars(select(User.id))).all() == [1]


# -- module functions and AsyncAttrs ---------------------------------------------------


async def test_async_object_session_and_async_session(seeded: Maker) -> None:
    async with seeded() as session:
        ann = await session.get_one(User, 1)
        assert async_orm.async_object_session(ann) is session
        assert async_orm.async_session(session.sync_session) is session
        assert async_orm.async_object_session(User(name="transient")) is None
        assert async_orm.async_session(Session()) is None


async def test_close_all_sessions_closes_every_session(
    seeded: Maker, engine: async_orm.AsyncEngine
) -> None:
    sessions = [seeded(), seeded()]
    for session in sessions:
        await session.execute(select(1))
    assert engine.pool.checkedout() == 2  # type: ignore[attr-defined]
    await async_orm.close_all_sessions()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert _worker.pool.stats()["busy"] == 0


async def test_awaitable_attrs_load_on_the_owning_sessions_worker_thread(
    seeded: Maker, statement_threads: StatementThreads
) -> None:
    async with seeded() as session:
        ann = await session.get_one(User, 1)
        session_thread = await session.run_sync(lambda s: threading.get_ident())
        statement_threads.records.clear()
        addresses = await ann.awaitable_attrs.addresses
        assert [a.email for a in addresses] == ["a1@x", "a2@x"]
        assert len(statement_threads.records) == 1
        assert "addresses" in statement_threads.records[0][1]
        assert statement_threads.threads == {session_thread}
        assert session_thread != threading.get_ident()
        statement_threads.records.clear()
        assert await ann.awaitable_attrs.addresses is addresses  # loaded: no SQL
        assert await ann.awaitable_attrs.name == "ann"
        assert await addresses[0].awaitable_attrs.user is ann  # many-to-one, identity map
        assert statement_threads.records == []
    detached = User(id=9, name="x")
    assert await detached.awaitable_attrs.name == "x"
    async with seeded() as session:
        bob = await session.get_one(User, 2)
    with pytest.raises(orm_exc.DetachedInstanceError):
        await bob.awaitable_attrs.addresses


async def test_statements_use_text_and_core_through_the_session(seeded: Maker) -> None:
    async with seeded() as session:
        result = await session.execute(text("select name from users order by id"))
        assert result.scalars().all() == ["ann", "bob"]
        await session.execute(update(User).where(User.id == 2).values(name="B"))
        stmt = sa.delete(Address).where(Address.user_id == 1)
        deleted = await session.execute(stmt)
        assert deleted.rowcount == 2  # type: ignore[attr-defined]
        await session.commit()
