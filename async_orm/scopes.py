"""Ready-made scope functions for :class:`~async_orm.async_scoped_session`.

A scope function returns the key of "the current scope"; the scoped session
keeps one :class:`~async_orm.AsyncSession` per key.  Three are provided:

:func:`task_scope`
    One session per asyncio task (``asyncio.current_task()``), the scope that
    SQLAlchemy's own documentation suggests for ``sqlalchemy.ext.asyncio``.
    Tasks spawned by the code (``asyncio.gather``) get sessions of their own.

:data:`local_scope` (a :class:`LocalScope`)
    One session per *context*, held in an ``asgiref.local.Local``: it
    follows the code through ``await``, into tasks it spawns, and across
    asgiref's ``sync_to_async`` / ``async_to_sync`` hops, so sync helpers
    called from an async view see the view's session.
    A thread started by other means (``loop.run_in_executor``, anyio's thread
    pool) does not see it: asgiref keeps ``Local`` data to the threads it moved
    the work to itself.  :class:`async_orm.django.AsyncSessionMiddleware` uses it.

:data:`context_scope` (a :class:`ContextScope`)
    Like :data:`local_scope`, held in a plain :class:`contextvars.ContextVar`:
    it also follows the code into every thread that runs with a copy of the
    context (``asyncio.to_thread``, anyio's ``to_thread.run_sync``, which
    Starlette and FastAPI use for sync endpoints and dependencies).
    :class:`async_orm.asgi.AsyncSessionMiddleware` uses it.

``with local_scope.enter(): ...`` (or ``context_scope.enter()``) starts a fresh
scope; the middlewares do this for every request.

::

    from async_orm import async_scoped_session, async_sessionmaker
    from async_orm.scopes import local_scope

    Session = async_scoped_session(async_sessionmaker(engine), scopefunc=local_scope)

Whatever the scope, end it with ``await Session.remove()``, which closes the
scope's session and gives its worker thread back.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from asgiref.local import Local

__all__ = [
    "ContextScope",
    "LocalScope",
    "ScopeKey",
    "context_scope",
    "local_scope",
    "task_scope",
]


def task_scope() -> asyncio.Task[Any]:
    """The current asyncio task, as a scope key: one session per task.

    Raises :class:`RuntimeError` outside a task (for instance in a sync
    function run by ``sync_to_async``, which has no task); use
    :data:`local_scope` for code that crosses into sync threads.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    if task is None:
        raise RuntimeError(
            "async_orm.scopes.task_scope() was called outside an asyncio task, so there is "
            "no task to key the session on. Call the scoped session from async code, or "
            "use scopefunc=async_orm.scopes.local_scope, which also follows sync_to_async."
        )
    return task


_scope_numbers = itertools.count(1)


class ScopeKey:
    """The key of one scope of a :class:`LocalScope` or :class:`ContextScope`: an
    opaque, hashable token compared by identity, so a key is never reused by a
    later scope."""

    __slots__ = {"__weakref__": None, "number": "A sequence number, shown in the repr."}

    def __init__(self) -> None:
        self.number = next(_scope_numbers)

    def __repr__(self) -> str:
        return f"<ScopeKey #{self.number}>"


class LocalScope:
    """A scope function whose key lives in an ``asgiref.local.Local``.

    Calling the object returns the current :class:`ScopeKey`, creating one for
    the current context when there is none (so code outside any
    :meth:`enter` block still gets a stable scope: per task in async code, per
    thread in plain sync code).  Code run through ``sync_to_async`` or
    ``async_to_sync`` sees the key of the code that called it.

    Sessions of a scope entered with :meth:`enter` must still be removed by the
    code that entered it (``await scoped.remove()`` inside the block).
    """

    __slots__ = ("_local",)

    def __init__(self) -> None:
        self._local = Local()

    def __call__(self) -> ScopeKey:
        """The current scope's key (created on first use in a context)."""
        key: ScopeKey | None = getattr(self._local, "key", None)
        if key is None:
            key = ScopeKey()
            self._local.key = key
        return key

    def current(self) -> ScopeKey | None:
        """The current scope's key, or ``None`` if no scope was entered or used
        in this context (unlike calling the object, this never creates one)."""
        key: ScopeKey | None = getattr(self._local, "key", None)
        return key

    @contextmanager
    def enter(self) -> Iterator[ScopeKey]:
        """Start a fresh scope for the code inside the ``with`` block.

        The previous scope (if any) is current again after the block.  Tasks
        created inside the block and sync code reached through asgiref hops
        belong to the new scope.
        """
        previous = self.current()
        key = ScopeKey()
        self._local.key = key
        try:
            yield key
        finally:
            if previous is None:
                try:
                    del self._local.key
                except AttributeError:
                    pass  # the block already ended the scope in this context
            else:
                self._local.key = previous


class ContextScope:
    """A scope function whose key lives in a :class:`contextvars.ContextVar`.

    The same interface as :class:`LocalScope`; the key is visible wherever the
    context is: in awaited code, in tasks it spawns, across asgiref hops, and
    in threads that run a copy of the context (``asyncio.to_thread``, anyio's
    thread pool, which Starlette and FastAPI use for sync endpoints and
    dependencies).
    """

    __slots__ = ("_var",)

    def __init__(self, name: str = "async_orm_scope") -> None:
        self._var: ContextVar[ScopeKey | None] = ContextVar(name, default=None)

    def __call__(self) -> ScopeKey:
        """The current scope's key (created on first use in a context)."""
        key = self._var.get()
        if key is None:
            key = ScopeKey()
            self._var.set(key)
        return key

    def current(self) -> ScopeKey | None:
        """The current scope's key, or ``None`` (never creates one)."""
        return self._var.get()

    @contextmanager
    def enter(self) -> Iterator[ScopeKey]:
        """Start a fresh scope for the code inside the ``with`` block."""
        key = ScopeKey()
        token = self._var.set(key)
        try:
            yield key
        finally:
            try:
                self._var.reset(token)
            except ValueError:  # exited in another context than entered
                self._var.set(None)


#: The shared :class:`LocalScope`; :mod:`async_orm.django` keys its
#: request-scoped sessions on it.
local_scope = LocalScope()

#: The shared :class:`ContextScope`; :mod:`async_orm.asgi` keys its
#: request-scoped sessions on it.
context_scope = ContextScope()
