"""async_scoped_session: scopefunc required, one session per scope, remove(),
configure(), and the proxied AsyncSession methods and attributes, on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import async_orm
from async_orm import AsyncSession, _worker
from tests.models import User

Maker = async_orm.async_sessionmaker[AsyncSession]
HAS_21 = hasattr(Session, "delete_all")


@pytest.fixture
async def cleanup() -> Any:
    """Closes every session of the scoped registries a test made, even if it fails."""
    made: list[async_orm.async_scoped_session[AsyncSession]] = []
    yield made.append
    for scoped in made:
        for session in list(scoped.registry.registry.values()):  # type: ignore[attr-defined]
            await session.close()


class Scope:
    """A scopefunc whose current scope the test switches explicitly."""

    def __init__(self) -> None:
        self.key = "a"

    def __call__(self) -> str:
        return self.key


def test_scopefunc_is_required(maker: Maker) -> None:
    with pytest.raises(TypeError, match="scopefunc"):
        async_orm.async_scoped_session(maker)  # type: ignore[call-arg]


async def test_one_session_per_scope_and_remove(maker: Maker, engine: Any, cleanup: Any) -> None:
    scope = Scope()
    scoped = async_orm.async_scoped_session(maker, scopefunc=scope)
    cleanup(scoped)
    assert scoped.session_factory is maker
    first = scoped()
    assert isinstance(first, AsyncSession) and scoped() is first
    assert scoped.registry() is first and scoped.registry.has()
    scope.key = "b"
    second = scoped()
    assert second is not first
    await second.execute(select(1))
    assert engine.pool.checkedout() == 1
    await scoped.remove()  # closes b's session and forgets it
    assert engine.pool.checkedout() == 0 and _worker.pool.stats()["busy"] == 0
    assert not scoped.registry.has()
    assert scoped() is not second
    await scoped.remove()
    scope.key = "a"
    assert scoped() is first
    await scoped.remove()
    await scoped.remove()  # nothing there: a no-op


async def test_call_with_arguments_creates_or_refuses(maker: Maker, cleanup: Any) -> None:
    scoped = async_orm.async_scoped_session(maker, scopefunc=Scope())
    cleanup(scoped)
    session = scoped(autoflush=False)
    assert session.autoflush is False and scoped() is session
    with pytest.raises(sa_exc.InvalidRequestError, match="already present"):
        scoped(autoflush=True)
    await scoped.remove()


async def test_configure_changes_the_factory_and_warns_if_a_session_exists(
    maker: Maker, cleanup: Any
) -> None:
    scoped = async_orm.async_scoped_session(maker, scopefunc=Scope())
    cleanup(scoped)
    scoped.configure(autoflush=False)
    assert scoped().autoflush is False
    with pytest.warns(sa_exc.SAWarning, match="already present"):
        scoped.configure(autoflush=True)
    await scoped.remove()
    assert scoped().autoflush is True
    await scoped.remove()


async def test_scoped_by_task_gives_each_task_its_session(maker: Maker, cleanup: Any) -> None:
    scoped = async_orm.async_scoped_session(maker, scopefunc=asyncio.current_task)
    barrier = asyncio.Barrier(2)

    async def task() -> AsyncSession:
        session = scoped()
        await scoped.execute(select(1))
        await barrier.wait()  # both sessions exist at once
        assert scoped() is session
        await scoped.remove()
        return session

    one, two = await asyncio.gather(task(), task())
    assert one is not two


async def test_proxied_methods_and_attributes_reach_the_scope_session(
    maker: Maker, engine: Any, cleanup: Any
) -> None:
    scoped = async_orm.async_scoped_session(maker, scopefunc=Scope())
    cleanup(scoped)
    session = scoped()
    ann = User(id=1, name="ann")
    scoped.add(ann)
    scoped.add_all([User(id=2, name="bob"), User(id=3, name="carl")])
    assert ann in scoped and len(scoped.new) == 3 and set(scoped) == set(session)
    await scoped.flush()
    assert scoped.is_modified(ann) is False
    ann.name = "ANN"
    assert ann in scoped.dirty and scoped.is_active
    await scoped.commit()
    assert await scoped.scalar(select(func.count()).select_from(User)) == 3
    assert (await scoped.scalars(select(User.id).order_by(User.id))).all() == [1, 2, 3]
    assert (await scoped.execute(select(User.name).where(User.id == 2))).scalar() == "bob"
    assert await scoped.get(User, 1) is ann
    assert (await scoped.get_one(User, 2)).name == "bob"
    await scoped.refresh(ann)
    merged = await scoped.merge(User(id=3, name="C"))
    await scoped.delete(merged)
    assert merged in scoped.deleted
    await scoped.rollback()
    scoped.expire(ann)
    scoped.expire_all()
    await scoped.refresh(ann)
    scoped.expunge(ann)
    assert ann not in scoped
    scoped.expunge_all()
    assert list(scoped) == []
    await scoped.rollback()
    async with scoped.begin():
        scoped.add(User(id=4, name="dora"))
    async with scoped.begin_nested():
        pass
    await scoped.rollback()
    assert scoped.bind is engine
    assert scoped.get_bind() is engine.sync_engine
    conn = await scoped.connection()
    assert isinstance(conn, async_orm.AsyncConnection)
    assert [r async for r in await scoped.stream(select(User.id).where(User.id == 4))] == [(4,)]
    assert [i async for i in await scoped.stream_scalars(select(User.id).where(User.id == 4))] == [
        4
    ]
    scoped.autoflush = False
    assert session.autoflush is False
    with scoped.no_autoflush:
        pass
    scoped.info["k"] = "v"
    assert session.info["k"] == "v"
    assert scoped.identity_map is session.identity_map
    assert scoped.identity_key(User, 1) == (User, (1,), None)
    assert async_orm.async_scoped_session.identity_key(User, 1) == (User, (1,), None)
    user = await scoped.get_one(User, 4)
    assert scoped.object_session(user) is session.sync_session
    if HAS_21:
        merged_all = await scoped.merge_all([User(id=5, name="emil")])
        await scoped.flush()
        await scoped.delete_all(merged_all)
        assert scoped.get_async_bind() is engine
        assert dict(scoped.binds) == {}  # a mapping, empty without binds=
        assert dict(scoped.execution_options) == {}
    await scoped.reset()
    assert not session.in_transaction()
    await scoped.invalidate()
    await scoped.close()
    await scoped.aclose()
    await scoped.remove()


async def test_close_all_through_the_scoped_class(maker: Maker, engine: Any, cleanup: Any) -> None:
    scoped = async_orm.async_scoped_session(maker, scopefunc=Scope())
    cleanup(scoped)
    await scoped.execute(select(1))
    assert engine.pool.checkedout() == 1
    with pytest.warns(sa_exc.SADeprecationWarning):
        await async_orm.async_scoped_session.close_all()
    assert engine.pool.checkedout() == 0
    await scoped.remove()


async def test_proxies_reach_the_session_of_the_scope_current_at_each_call(
    maker: Maker, cleanup: Any
) -> None:
    scope = Scope()
    scoped = async_orm.async_scoped_session(maker, scopefunc=scope)
    cleanup(scoped)
    ann = User(id=1, name="ann")
    scoped.add(ann)
    scoped.autoflush = False
    scope.key = "b"
    assert ann not in scoped and len(scoped.new) == 0 and scoped.autoflush is True
    assert await scoped.get(User, 1) is None  # b's session sees no pending ann
    scope.key = "a"
    assert ann in scoped and scoped.autoflush is False
    await scoped.commit()
    scope.key = "b"
    assert (await scoped.get_one(User, 1)) is not ann  # b loads its own copy
    await scoped.remove()
    scope.key = "a"
    await scoped.remove()


def test_every_proxy_is_declared_and_a_misspelled_name_is_an_attribute_error(
    maker: Maker,
) -> None:
    # declared on the class (typed, visible to editors), not found by __getattr__
    scoped = async_orm.async_scoped_session(maker, scopefunc=Scope())
    assert not hasattr(async_orm.async_scoped_session, "__getattr__")
    with pytest.raises(AttributeError, match="comit"):
        scoped.comit  # type: ignore[attr-defined]  # noqa: B018
    for name in ("commit", "get", "stream", "stream_scalars", "dirty", "close_all"):
        assert name in vars(async_orm.async_scoped_session), name
    assert async_orm.async_scoped_session.get.__doc__.startswith(  # type: ignore[union-attr]
        "Proxy for :meth:`AsyncSession.get"
    )
