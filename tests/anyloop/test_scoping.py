"""async_scoped_session under asyncio and Trio: one session per task, with a task
scope that works under both libraries (async_orm's ``task_scope`` under asyncio,
``trio.lowlevel.current_task`` under Trio, as docs/trio.rst says) and with a
:class:`~async_orm.scopes.ContextScope` (a context variable, which each task of a
task group gets a copy of); ``remove()`` closes the task's session."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
import sniffio
import trio
from sqlalchemy import text

import async_orm
from async_orm.scopes import ContextScope, task_scope
from tests.anyloop.conftest import LoopRun


def current_task_scope() -> object:
    """The current task of whichever library runs: one session per task."""
    if sniffio.current_async_library() == "trio":
        return trio.lowlevel.current_task()
    return task_scope()


SCOPES: dict[str, Callable[[], Callable[[], object]]] = {
    "task": lambda: current_task_scope,
    "context": lambda: ContextScope("anyloop_scope"),
}


@pytest.mark.parametrize("scope", list(SCOPES))
def test_scoped_session_gives_each_task_its_own_session_until_remove(
    run: LoopRun, scope: str
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        scoped = async_orm.async_scoped_session(
            async_orm.async_sessionmaker(engine), scopefunc=SCOPES[scope]()
        )
        registry = scoped.registry.registry
        sessions: dict[str, async_orm.AsyncSession] = {}
        both_ready, go = anyio.Event(), anyio.Event()

        async def task(name: str) -> None:
            session = scoped()
            assert scoped() is session
            assert await scoped.scalar(text("select 1")) == 1  # through the proxy
            assert session.in_transaction()  # the proxy reached this task's session
            sessions[name] = session
            if len(sessions) == 2:
                both_ready.set()
            await go.wait()
            assert scoped() is session
            await scoped.remove()
            assert not scoped.registry.has()
            assert not session.in_transaction()  # closed
            fresh = scoped()
            assert fresh is not session
            await scoped.remove()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(task, "a")
                tg.start_soon(task, "b")
                await both_ready.wait()
                assert sessions["a"] is not sessions["b"]
                assert len(registry) == 2
                assert engine.pool.checkedout() == 2  # type: ignore[attr-defined]
                go.set()
        assert len(registry) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    run(body)
