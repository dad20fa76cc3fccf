"""Scheduling work on the event loop from code that runs on a worker thread.

Session and engine listeners (``after_commit``, ``before_flush``, ...) run where
the sync SQLAlchemy call runs: on the session's worker thread, which has no
running event loop.  Code written for ``sqlalchemy.ext.asyncio`` that calls
``asyncio.create_task()`` or ``asyncio.get_running_loop()`` there fails with
"no running event loop".  These two helpers hand the work to the loop of the
task that awaited the call (the one that fired the event), thread-safely; on an
event loop thread they are ``loop.create_task()`` and ``loop.call_soon()``.

The one-line migration::

    asyncio.create_task(invalidate(keys))        # before
    async_orm.create_task_in_loop(invalidate(keys))  # after
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from typing_extensions import TypeVarTuple, Unpack

from . import _worker

__all__ = ["call_soon_in_loop", "create_task_in_loop"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


def _no_loop(helper: str) -> RuntimeError:
    return RuntimeError(
        f"async_orm.{helper}() found no event loop to schedule on: it was called neither "
        "on an event loop thread nor on an async_orm worker thread running an awaited "
        "call (such as a listener fired by 'await session.commit()'). Call it from a "
        "listener of an AsyncSession/AsyncConnection call or from async code; in plain "
        "sync code, run the work directly."
    )


def _loop_context() -> contextvars.Context:
    """The caller's context variables, less the marker that says "inside this session's
    run_sync()": the scheduled work runs later, on the loop, where using the session
    again is fine (it is served after the call in flight)."""
    context = contextvars.copy_context()
    context.run(_worker._inside_runner.set, None)
    return context


def create_task_in_loop(
    coro: Coroutine[Any, Any, _T],
) -> asyncio.Task[_T] | concurrent.futures.Future[_T]:
    """Run ``coro`` as a task of the event loop that awaits the current call.

    The thread-safe replacement for ``asyncio.create_task(coro)`` in session and
    engine listeners, which async_orm runs on the session's worker thread.  On a
    worker thread it returns a :class:`concurrent.futures.Future` of the task's
    result (as :func:`asyncio.run_coroutine_threadsafe`; cancelling it cancels the
    task); on an event loop thread it is ``loop.create_task(coro)`` and returns the
    :class:`asyncio.Task`.  Both have ``add_done_callback()``, ``cancel()`` and
    ``result()``.  Never blocks: the task starts once the loop gets to it.
    """
    loop = _worker.calling_loop()
    if loop is not None:
        return _loop_context().run(asyncio.run_coroutine_threadsafe, coro, loop)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        coro.close()  # never awaited: close it rather than warn "never awaited"
        raise _no_loop("create_task_in_loop") from None
    return running.create_task(coro)


def call_soon_in_loop(
    callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
) -> asyncio.Handle:
    """Call ``callback(*args)`` soon on the event loop that awaits the current call.

    The thread-safe replacement for ``asyncio.get_running_loop().call_soon(...)``
    in session and engine listeners: on an async_orm worker thread it is
    ``loop.call_soon_threadsafe(callback, *args)`` for the loop of the task that
    fired the event; on an event loop thread it is ``loop.call_soon(callback, *args)``.
    """
    loop = _worker.calling_loop()
    if loop is not None:
        return loop.call_soon_threadsafe(callback, *args, context=_loop_context())
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        raise _no_loop("call_soon_in_loop") from None
    return running.call_soon(callback, *args)
