"""Stand-ins for the greenlet helpers and private names that SQLAlchemy's asyncio
tests import, so the copied files import async_orm and nothing that needs greenlet.

The runner rewrites these imports of the copied test files to this module:

* ``sqlalchemy.util.greenlet_spawn`` -> :func:`greenlet_spawn`
* ``sqlalchemy.util.concurrency.await_`` / ``await_only`` -> :func:`await_`
* ``sqlalchemy.ext.asyncio.base.ReversibleProxy`` -> :data:`ReversibleProxy`
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from async_orm import allow_loop_io

_T = TypeVar("_T")


async def greenlet_spawn(
    fn: Callable[..., _T], *args: Any, _require_await: bool = False, **kwargs: Any
) -> _T:
    """SQLAlchemy's ``greenlet_spawn`` runs a sync function on the event loop's
    thread, in a greenlet where blocking (sync-driver) I/O is allowed.  The tests
    use it to call sync DBAPI / Connection methods from an async test; the
    async_orm equivalent is that call on the loop thread with the guard off."""
    with allow_loop_io():
        return fn(*args, **kwargs)


async def _awaiting(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def await_(awaitable: Awaitable[_T]) -> _T:
    """SQLAlchemy's ``await_`` / ``await_only`` hands a coroutine to the loop of the
    greenlet that runs the (sync) test or teardown, and waits for it.  Without
    greenlet, sync code cannot wait on its own running loop, so the coroutine runs
    to completion on a loop of its own: on this thread when no loop runs here,
    else on a helper thread (async_orm binds to no loop)."""
    coro: Coroutine[Any, Any, _T] = (
        awaitable if asyncio.iscoroutine(awaitable) else _awaiting(awaitable)
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, "conformance-await") as pool:
        return pool.submit(asyncio.run, coro).result()


await_only = await_


class _NoRegistry:
    """What ``ReversibleProxy._proxy_objects`` is when async_orm keeps no such
    registry: every use fails the test with the reason."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(
            "async_orm has no ReversibleProxy._proxy_objects registry (a private "
            "name of sqlalchemy.ext.asyncio.base that this test counts)"
        )

    clear = _refuse
    __len__ = _refuse
    __iter__ = _refuse
    __contains__ = _refuse
    __getitem__ = _refuse


class _NoReversibleProxy:
    """Placeholder for ``sqlalchemy.ext.asyncio.base.ReversibleProxy``."""

    _proxy_objects = _NoRegistry()


ReversibleProxy: Any
try:  # if async_orm ever grows the same private base class, test it
    from async_orm.base import ReversibleProxy  # type: ignore[import-not-found,no-redef]
except ImportError:
    ReversibleProxy = _NoReversibleProxy
