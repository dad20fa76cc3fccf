"""The helpers for listeners, which async_orm runs on the session's worker thread:
``create_task_in_loop`` and ``call_soon_in_loop`` reach the event loop of the task
that fired the event, under asyncio and Trio."""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio
from sqlalchemy import event, insert

import async_orm
from tests.anyloop.conftest import LoopRun
from tests.models import User

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_a_listener_schedules_work_on_the_loop_of_the_task_that_fired_it(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()
        done = anyio.Event()
        seen: dict[str, Any] = {}
        futures: list[Any] = []

        async def after_commit_work(n: int) -> int:
            seen["task"] = (sniffio.current_async_library(), threading.get_ident())
            seen["request_id"] = request_id.get()
            await anyio.lowlevel.checkpoint()
            return n * 2

        def soon(tag: str) -> None:
            seen["soon"] = (tag, threading.get_ident(), request_id.get())
            done.set()

        def after_commit(session: Any) -> None:
            seen["listener"] = threading.get_ident()
            futures.append(async_orm.create_task_in_loop(after_commit_work(21)))
            assert async_orm.call_soon_in_loop(soon, "tag") is not None or (
                run.library == "trio"  # Trio's run_sync_soon has no handle
            )

        request_id.set("req-7")
        maker = async_orm.async_sessionmaker(engine)
        async with maker() as session:
            event.listen(session.sync_session, "after_commit", after_commit)
            await session.execute(insert(User).values(id=1, name="ada"))
            await session.commit()
        with anyio.fail_after(5):
            await done.wait()
        (future,) = futures
        assert isinstance(future, concurrent.futures.Future)
        result = await anyio.to_thread.run_sync(future.result, 5)
        assert result == 42
        assert seen["listener"] != loop_thread  # listeners run on the worker
        assert seen["task"] == (run.library, loop_thread)  # the work on the loop
        assert seen["soon"] == ("tag", loop_thread, "req-7")
        assert seen["request_id"] == "req-7"  # the caller's context variables

    run(body)


def test_the_helpers_work_on_the_loop_thread_itself(run: LoopRun) -> None:
    """Called from async code (not a listener), both helpers schedule on the running
    loop: asyncio's create_task/call_soon, or the Trio run's system task/run_sync_soon."""

    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()
        soon_done = anyio.Event()
        seen: dict[str, Any] = {}

        async def work() -> int:
            seen["task"] = (sniffio.current_async_library(), threading.get_ident())
            seen["request_id"] = request_id.get()
            await anyio.lowlevel.checkpoint()
            return 5

        def soon(tag: str) -> None:
            seen["soon"] = (tag, threading.get_ident(), request_id.get())
            soon_done.set()

        request_id.set("req-9")
        task = async_orm.create_task_in_loop(work())
        handle = async_orm.call_soon_in_loop(soon, "now")
        with anyio.fail_after(5):
            await soon_done.wait()
        if run.library == "asyncio":
            assert handle is not None
            assert await task == 5  # type: ignore[misc]
        else:
            assert handle is None and isinstance(task, concurrent.futures.Future)
            assert await anyio.to_thread.run_sync(task.result, 5) == 5
        assert seen["task"] == (run.library, loop_thread)
        assert seen["soon"] == ("now", loop_thread, "req-9")
        assert seen["request_id"] == "req-9"

    run(body)


def test_cancelling_the_future_of_a_scheduled_task_cancels_it(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        started, ended, forever = threading.Event(), anyio.Event(), anyio.Event()
        futures: list[Any] = []

        async def waits_forever() -> None:
            started.set()
            try:
                await forever.wait()
            finally:
                ended.set()  # by the cancellation

        maker = async_orm.async_sessionmaker(engine)
        async with maker() as session:
            await session.run_sync(
                lambda _: futures.append(async_orm.create_task_in_loop(waits_forever()))
            )
        (future,) = futures
        assert await anyio.to_thread.run_sync(started.wait, 5)
        assert future.cancel()
        with anyio.fail_after(5):
            await ended.wait()
        assert future.cancelled() and not forever.is_set()

    run(body)


def test_await_only_hands_a_coroutine_back_to_the_loop_of_the_awaiting_task(
    run: LoopRun,
) -> None:
    from async_orm import _standin

    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()

        async def on_the_loop() -> tuple[str, int]:
            await anyio.lowlevel.checkpoint()
            return sniffio.current_async_library(), threading.get_ident()

        async with async_orm.AsyncSession(engine) as session:
            got = await session.run_sync(lambda _: _standin.await_only(on_the_loop()))
            assert got == (run.library, loop_thread)
            # a coroutine that needs the worker it is blocking is refused, not a deadlock
            with pytest.raises(async_orm.exc.ReentrantCallError):
                await session.run_sync(
                    lambda _: _standin.await_only(session.execute(insert(User).values(id=2)))
                )

    run(body)
