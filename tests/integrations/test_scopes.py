"""The ready-made scope functions of async_orm.scopes with async_scoped_session."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from sqlalchemy import select

import async_orm
from async_orm import AsyncSession, async_scoped_session, async_sessionmaker
from async_orm.scopes import ContextScope, LocalScope, context_scope, local_scope, task_scope
from tests.integrations.conftest import assert_nothing_leaked
from tests.integrations.rendezvous import Rendezvous
from tests.models import User


def scoped_on(
    maker: async_sessionmaker[AsyncSession], scopefunc: Any
) -> async_scoped_session[AsyncSession]:
    return async_scoped_session(maker, scopefunc=scopefunc)


async def test_task_scope_gives_each_task_its_own_session(
    maker: async_sessionmaker[AsyncSession], engine: async_orm.AsyncEngine
) -> None:
    Session = scoped_on(maker, task_scope)

    async def work(name: str) -> tuple[int, int]:
        try:
            session = Session()
            assert Session() is session
            Session.add(User(name=name))
            await Session.commit()
            thread = await Session().run_sync(lambda s: threading.get_ident())
            return id(session), thread
        finally:
            await Session.remove()

    results = await asyncio.gather(work("a"), work("b"), work("c"))
    assert len({session for session, _ in results}) == 3
    assert Session.registry.registry == {}
    async with maker() as session:
        assert sorted((await session.scalars(select(User.name))).all()) == ["a", "b", "c"]
    assert_nothing_leaked(engine)


def test_task_scope_outside_a_task_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="local_scope"):
        task_scope()


@pytest.mark.parametrize("scope", [local_scope, context_scope], ids=["local", "context"])
async def test_sync_to_async_and_back_see_the_same_session(
    maker: async_sessionmaker[AsyncSession],
    engine: async_orm.AsyncEngine,
    scope: LocalScope | ContextScope,
) -> None:
    Session = scoped_on(maker, scope)
    with scope.enter():
        session = Session()

        def sync_code() -> tuple[bool, bool, int]:
            # a sync helper (sync_to_async thread), which calls async code again
            same_in_thread = Session() is session

            async def async_again() -> bool:
                await Session.execute(select(User))
                return Session() is session

            same_in_async = async_to_sync(async_again)()
            return same_in_thread, same_in_async, threading.get_ident()

        same_in_thread, same_in_async, thread = await sync_to_async(sync_code)()
        assert thread != threading.get_ident()
        assert same_in_thread and same_in_async
        await Session.remove()
    assert_nothing_leaked(engine)


async def test_context_scope_also_follows_thread_pools_local_scope_does_not(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    with context_scope.enter() as ckey, local_scope.enter() as lkey:
        assert await asyncio.to_thread(context_scope) is ckey
        # asgiref keeps Local data to the threads it moved the work to itself
        assert await asyncio.to_thread(local_scope) is not lkey
        assert await sync_to_async(local_scope)() is lkey


@pytest.mark.parametrize("scope", [local_scope, context_scope], ids=["local", "context"])
async def test_enter_starts_a_fresh_scope_and_restores_the_previous(
    scope: LocalScope | ContextScope,
) -> None:
    async def isolated() -> None:
        assert scope.current() is None
        outer = scope()
        with scope.enter() as inner:
            assert scope() is inner is not outer
            with scope.enter() as innermost:
                assert scope() is innermost
            assert scope() is inner
        assert scope() is outer

        async def child() -> Any:
            return scope()

        with scope.enter() as key:
            assert await asyncio.create_task(child()) is key

    await contextvars.Context().run(asyncio.create_task, isolated())


async def test_scoped_sessions_of_concurrent_scopes_are_distinct(
    maker: async_sessionmaker[AsyncSession], engine: async_orm.AsyncEngine
) -> None:
    Session = scoped_on(maker, local_scope)
    barrier = Rendezvous(3)

    async def request() -> tuple[int, int]:
        with local_scope.enter():
            try:
                thread = await Session().run_sync(lambda s: threading.get_ident())
                await barrier.wait()
                return id(Session()), thread
            finally:
                await Session.remove()

    results = await asyncio.wait_for(asyncio.gather(*(request() for _ in range(3))), 30)
    assert len({s for s, _ in results}) == 3 and len({t for _, t in results}) == 3
    assert Session.registry.registry == {}
    assert_nothing_leaked(engine)
