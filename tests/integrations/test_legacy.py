"""Legacy sync code under async_orm: an existing Session subclass, sync engine
and event listeners; sync functions taking a Session; multiple binds; and
SQLAlchemy's horizontal sharding session."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, event, select
from sqlalchemy.ext.horizontal_shard import ShardedSession, set_shard_id
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import async_orm
from async_orm import AsyncEngine, AsyncSession, async_sessionmaker
from async_orm.asgi import AsyncSessionMiddleware, current_session
from tests.conftest import StatementThreads
from tests.integrations.asgi_apps import run_lifespan
from tests.integrations.conftest import assert_nothing_leaked
from tests.models import Address, Base, User

# -- an "existing application": its session class, engine and listeners ------------


class LegacySession(Session):
    """The application's own Session subclass, with a helper method."""

    def users_named(self, name: str) -> list[User]:
        return list(self.scalars(select(User).where(User.name == name)).all())


def users_named(session: Session, name: str) -> list[User]:
    """Call the application's session method (on the worker thread)."""
    assert isinstance(session, LegacySession)
    return session.users_named(name)


class AuditLog:
    """What the application's listeners record, and on which threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.flush_threads: set[int] = set()
        self.commits = 0

    def before_flush(self, session: Session, context: Any, instances: Any) -> None:
        with self.lock:
            self.flush_threads.add(threading.get_ident())
        for obj in session.new:
            if isinstance(obj, User):
                obj.name = obj.name.strip().lower()  # the app normalizes names on flush

    def after_commit(self, session: Session) -> None:
        with self.lock:
            self.commits += 1


@pytest.fixture
def legacy_engine(db_url: tuple[str, dict[str, Any]]) -> Iterator[sa.Engine]:
    """The application's sync engine, tables created the sync way."""
    url, kwargs = db_url
    engine = sa.create_engine(url, **kwargs)
    Base.metadata.create_all(engine)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0


@pytest.fixture
def audit() -> Iterator[AuditLog]:
    log = AuditLog()
    event.listen(LegacySession, "before_flush", log.before_flush)
    event.listen(LegacySession, "after_commit", log.after_commit)
    yield log
    event.remove(LegacySession, "before_flush", log.before_flush)
    event.remove(LegacySession, "after_commit", log.after_commit)


async def test_existing_session_class_engine_and_listeners_work_unchanged(
    legacy_engine: sa.Engine, audit: AuditLog
) -> None:
    statements = StatementThreads(legacy_engine)  # an engine listener of the app
    LegacyFactory = sessionmaker(legacy_engine, class_=LegacySession)  # the old factory
    Session_ = async_sessionmaker(
        legacy_engine, sync_session_class=LegacySession, expire_on_commit=False
    )
    try:
        async with Session_() as session:
            assert isinstance(session.sync_session, LegacySession)
            session.add(User(name="  Ann  "))
            await session.commit()
            found = await session.run_sync(users_named, "ann")
            assert [u.name for u in found] == ["ann"]
        assert audit.commits == 1
        assert audit.flush_threads and threading.get_ident() not in audit.flush_threads
        assert statements.threads and threading.get_ident() not in statements.threads

        # the old sync code path keeps working next to the async one (off the loop)
        def old_code() -> list[str]:
            with LegacyFactory() as sync_session:
                sync_session.add(User(name="BOB"))
                sync_session.commit()
                return [u.name for u in sync_session.users_named("bob")]

        assert await asyncio.to_thread(old_code) == ["bob"]
        assert audit.commits == 2
        async with Session_() as session:
            assert (await session.scalars(select(User.name).order_by(User.id))).all() == [
                "ann",
                "bob",
            ]
    finally:
        statements.close()
    assert_nothing_leaked(AsyncEngine(legacy_engine))


# -- legacy functions taking a Session ------------------------------------------------


def add_user_with_addresses(session: Session, name: str, emails: list[str]) -> int:
    """Existing sync code: flushes, then lazy-loads a collection to append to it."""
    user = User(name=name)
    session.add(user)
    session.flush()
    session.expire(user, ["addresses"])
    for email in emails:
        user.addresses.append(Address(email=email))  # a lazy load: SQL, on the worker
    session.flush()
    return user.id


def report(session: Session) -> list[tuple[str, list[str]]]:
    """Existing sync code relying on lazy loading throughout."""
    users = session.scalars(select(User).order_by(User.id)).all()
    return [(u.name, [a.email for a in u.addresses]) for u in users]


async def test_legacy_function_taking_a_session_runs_as_is_through_run_sync(
    maker: async_sessionmaker[AsyncSession], statement_threads: StatementThreads
) -> None:
    async with maker() as session:
        user_id = await session.run_sync(add_user_with_addresses, "ann", ["a@x.org", "b@x.org"])
        await session.commit()
    async with maker() as session:
        assert await session.run_sync(report) == [("ann", ["a@x.org", "b@x.org"])]
        user = await session.get(User, user_id)
        assert user is not None
        # outside run_sync the same lazy load is refused instead of blocking the loop
        with pytest.raises(async_orm.exc.EventLoopIOError, match=r"User\.addresses"):
            _ = user.addresses
    assert len(statement_threads.threads) >= 1
    assert threading.get_ident() not in statement_threads.threads


# -- multiple binds -------------------------------------------------------------------


class OtherBase(DeclarativeBase):
    pass


class Note(OtherBase):
    """A model that lives in a second database."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column()
    text: Mapped[str] = mapped_column(String(100))


@pytest.fixture
async def second_engine(
    second_db_url: tuple[str, dict[str, Any]],
) -> Any:
    url, kwargs = second_db_url
    engine = async_orm.create_async_engine(url, **kwargs)
    async with engine.begin() as conn:
        await conn.run_sync(OtherBase.metadata.create_all)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    await engine.dispose()
    assert checked_out == 0


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(sa.func.count()).select_from(table)) or 0)


@pytest.mark.parametrize("second_as", ["async", "sync"])
async def test_multiple_binds(
    engine: AsyncEngine, second_engine: AsyncEngine, second_as: str
) -> None:
    other: Any = second_engine if second_as == "async" else second_engine.sync_engine
    maker = async_sessionmaker(
        binds={User: engine, Address: engine, Note: other}, expire_on_commit=False
    )
    async with maker() as session:
        assert session.get_bind(User) is engine.sync_engine
        assert session.get_bind(Note) is second_engine.sync_engine
        user = User(name="ann")
        session.add(user)
        await session.flush()
        session.add(Note(user_id=user.id, text="hello"))
        await session.commit()
        notes = (await session.scalars(select(Note))).all()
        assert [(n.user_id, n.text) for n in notes] == [(user.id, "hello")]
    assert await count(engine, User.__table__) == 1  # type: ignore[arg-type]
    assert await count(second_engine, Note.__table__) == 1  # type: ignore[arg-type]
    # a failure rolls back both databases
    with pytest.raises(RuntimeError):
        async with maker() as session, session.begin():
            session.add_all([User(name="bob"), Note(user_id=0, text="lost")])
            await session.flush()
            raise RuntimeError("boom")
    assert await count(engine, User.__table__) == 1  # type: ignore[arg-type]
    assert await count(second_engine, Note.__table__) == 1  # type: ignore[arg-type]
    assert_nothing_leaked(engine)
    assert_nothing_leaked(second_engine)


# -- horizontal sharding --------------------------------------------------------------


class ShardBase(DeclarativeBase):
    pass


class Reading(ShardBase):
    """Weather readings, sharded by continent."""

    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    continent: Mapped[str] = mapped_column(String(20))
    value: Mapped[int] = mapped_column()
    station_id: Mapped[int | None] = mapped_column(ForeignKey("readings.id"), nullable=True)


SHARD_OF = {"europe": "east", "asia": "east", "america": "west"}


def shard_chooser(mapper: Any, instance: Any, clause: Any = None, **kw: Any) -> str:
    return SHARD_OF[instance.continent]


def identity_chooser(mapper: Any, primary_key: Any, **kw: Any) -> list[str]:
    return ["east", "west"]


def execute_chooser(context: Any) -> list[str]:
    return ["east", "west"]


async def test_horizontal_sharding_session_through_the_same_api(
    engine: AsyncEngine, second_engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(ShardBase.metadata.create_all)
    async with second_engine.begin() as conn:
        await conn.run_sync(ShardBase.metadata.create_all)
    east, west = engine.sync_engine, second_engine.sync_engine
    east_threads, west_threads = StatementThreads(east), StatementThreads(west)
    maker = async_sessionmaker(
        sync_session_class=ShardedSession,
        shards={"east": east, "west": west},
        shard_chooser=shard_chooser,
        identity_chooser=identity_chooser,
        execute_chooser=execute_chooser,
        expire_on_commit=False,
    )
    try:
        async with maker() as session:
            session.add_all(
                [
                    Reading(id=1, continent="europe", value=10),
                    Reading(id=2, continent="america", value=20),
                    Reading(id=3, continent="asia", value=30),
                ]
            )
            await session.commit()
        async with maker() as session:
            readings = (await session.scalars(select(Reading))).all()
            assert sorted((r.id, r.continent) for r in readings) == [
                (1, "europe"),
                (2, "america"),
                (3, "asia"),
            ]
            american = await session.get(Reading, 2)
            assert american is not None and american.value == 20
            assert sa.inspect(american).identity_token == "west"
            east_only = (
                await session.scalars(select(Reading).options(set_shard_id("east")))
            ).all()
            assert sorted(r.id for r in east_only) == [1, 3]
            american.value = 21
            await session.commit()
        async with engine.connect() as conn:
            assert (await conn.scalars(select(Reading.id).order_by(Reading.id))).all() == [1, 3]
        async with second_engine.connect() as conn:
            assert (await conn.scalar(select(Reading.value))) == 21
        threads = east_threads.threads | west_threads.threads
        assert threads and threading.get_ident() not in threads
    finally:
        east_threads.close()
        west_threads.close()
    assert_nothing_leaked(engine)
    assert_nothing_leaked(second_engine)


async def test_request_sessions_with_binds_and_shutdown_disposing_every_engine(
    engine: AsyncEngine, second_engine: AsyncEngine
) -> None:
    """The ASGI middleware with a multi-bind session maker: one request writes to
    both databases in one session; lifespan shutdown disposes of both engines."""
    maker = async_sessionmaker(
        binds={User: engine, Address: engine, Note: second_engine.sync_engine},
        expire_on_commit=False,
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("no lifespan here")
        session = current_session()
        user = User(name="ann")
        session.add(user)
        await session.flush()
        session.add(Note(user_id=user.id, text="hello"))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AsyncSessionMiddleware(app, maker)
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/")).status_code == 201
    assert await count(engine, User.__table__) == 1  # type: ignore[arg-type]
    assert await count(second_engine, Note.__table__) == 1  # type: ignore[arg-type]
    pools = (engine.sync_engine.pool, second_engine.sync_engine.pool)

    async def nothing() -> None:
        pass

    await run_lifespan(middleware, nothing)
    assert engine.sync_engine.pool is not pools[0]
    assert second_engine.sync_engine.pool is not pools[1]
    assert_nothing_leaked(engine)
    assert_nothing_leaked(second_engine)
