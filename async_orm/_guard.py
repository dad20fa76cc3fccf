"""Refusing database I/O on a thread whose event loop is running.

A sync SQLAlchemy call that reaches the database from the event loop thread
(a lazy load, an expired attribute, ``session.sync_session.execute(...)``)
would block every task of that loop.  These hooks turn that into
:class:`~async_orm.exc.EventLoopIOError` (a ``MissingGreenlet``), naming what
was being loaded and the three ways out.  The check is one C call per
statement (``asyncio._get_running_loop()``), never per row.

Opting out (for code that accepts blocking the loop): set the environment
variable ``ASYNC_ORM_ALLOW_LOOP_IO=1``, or wrap the code in
``with async_orm.allow_loop_io(): ...``.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.state import InstanceState

from . import _sa_compat
from .exc import EventLoopIOError

_get_running_loop = _sa_compat.get_running_loop
_modules = sys.modules

_allowed: ContextVar[bool] = ContextVar("async_orm_allow_loop_io", default=False)
_ENV_ALLOWED = os.environ.get("ASYNC_ORM_ALLOW_LOOP_IO", "").lower() not in ("", "0", "false")

_FIXES = (
    "Load it in the query (e.g. selectinload({cls}.{attr})), await "
    "obj.awaitable_attrs.{attr}, or run the code in await session.run_sync(fn)."
)


@contextmanager
def allow_loop_io() -> Iterator[None]:
    """Allow sync database I/O on the event loop thread inside this block.

    This opts out of async_orm's guard for code that accepts blocking the event
    loop (scripts, tests, a REPL).  The statement still runs on the calling
    thread, not on the session's worker.
    """
    token = _allowed.set(True)
    try:
        yield
    finally:
        _allowed.reset(token)


def trio_running() -> Any:
    """``trio.lowlevel`` when a Trio run is in progress on this thread, else None.
    Never imports Trio: code that does not use it never loads it."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    lowlevel = trio.lowlevel
    return lowlevel if lowlevel.in_trio_run() else None


def loop_io_refused() -> bool:
    """True when the current thread runs an event loop (asyncio or Trio) and no
    opt-out applies."""
    if _get_running_loop() is None and ("trio" not in _modules or trio_running() is None):
        return False
    return not (_ENV_ALLOWED or _allowed.get())


def describe_instance(state: InstanceState[Any]) -> str:
    """``<User id=5>`` without touching any attribute (so without loading)."""
    cls = state.class_.__name__
    identity = state.identity
    if identity is None:
        return f"<{cls} (pending)>"
    names = [col.key for col in state.mapper.primary_key]
    pairs = ", ".join(f"{name}={value!r}" for name, value in zip(names, identity, strict=False))
    return f"<{cls} {pairs}>"


class _ExecuteView:
    """What the error message needs of an ORM execution, read from the statement and
    its execution options (like :class:`~sqlalchemy.orm.ORMExecuteState` does), built
    only when a statement is refused."""

    def __init__(self, statement: Any, execution_options: Any) -> None:
        self.statement = statement
        self.is_select = bool(getattr(statement, "is_select", False))
        self.load_options = (execution_options or {}).get("_sa_orm_load_options")
        # ORM compile options carry the loader path and the attributes being refreshed
        options = getattr(statement, "_compile_options", None) if self.is_select else None
        self.compile_options = options
        self.path = getattr(options, "_current_path", None)


def _load_message(view: _ExecuteView) -> str:
    if view.is_select:
        options = view.load_options
        owner: InstanceState[Any] | None = getattr(options, "_lazy_loaded_from", None)
        if owner is not None and view.path:
            attr = getattr(view.path, "prop", None)
            name = getattr(attr, "key", None) or "<relationship>"
            cls = owner.class_.__name__
            return (
                f"{cls}.{name} on {describe_instance(owner)} needs a database load (lazy "
                "loading), which would block the event loop. " + _FIXES.format(cls=cls, attr=name)
            )
        refresh: InstanceState[Any] | None = getattr(options, "_refresh_state", None)
        if refresh is not None:
            cls = refresh.class_.__name__
            keys = sorted(getattr(view.compile_options, "_only_load_props", None) or ())
            what = (
                f"{cls}.{keys[0]} on {describe_instance(refresh)} is"
                if len(keys) == 1
                else f"The attributes of {describe_instance(refresh)} ({', '.join(keys)}) are"
            )
            return (
                f"{what} expired or deferred and need a database load, which would block "
                "the event loop (attributes expire after commit() unless "
                "expire_on_commit=False). Refresh them first with await "
                "session.refresh(obj), await obj.awaitable_attrs.<name>, or run the code in "
                "await session.run_sync(fn)."
            )
    return (
        f"A sync ORM statement ({str(view.statement)[:80]!r}) was executed on the "
        "event loop thread, which would block the event loop. Await the AsyncSession's "
        "method instead (await session.execute(...)), or run sync code in await "
        "session.run_sync(fn)."
    )


def _execute_on_loop(statement: Any, execution_options: Any) -> EventLoopIOError:
    return EventLoopIOError(_load_message(_ExecuteView(statement, execution_options)))


_FLUSH_ON_LOOP = (
    "A flush of this AsyncSession's pending changes was started on the event loop "
    "thread (autoflush or sync_session.flush()), which would block the event "
    "loop. Await session.flush() / session.commit(), or run sync code in await "
    "session.run_sync(fn)."
)


def _guarded_execute(
    ref: Callable[[], Session | None],
    execute: Callable[..., Any],
    statement: Any,
    params: Any = None,
    *args: Any,
    **kw: Any,
) -> Any:
    if (
        _get_running_loop() is not None or ("trio" in _modules and trio_running() is not None)
    ) and loop_io_refused():
        raise _execute_on_loop(statement, kw.get("execution_options"))
    return execute(ref(), statement, params, *args, **kw)


def _guarded_flush(
    ref: Callable[[], Session | None], flush: Callable[..., None], objects: Any = None
) -> None:
    # Session.flush() calls _flush() only when there is something to send, so a
    # clean session's autoflush (before every query) does not get here
    if (
        _get_running_loop() is not None or ("trio" in _modules and trio_running() is not None)
    ) and loop_io_refused():
        raise EventLoopIOError(_FLUSH_ON_LOOP)
    flush(ref(), objects)


def _guarded_commit(ref: Callable[[], Session | None], commit: Callable[..., None]) -> None:
    # before the transaction changes state, so a refused commit leaves it usable
    if (
        _get_running_loop() is not None or ("trio" in _modules and trio_running() is not None)
    ) and loop_io_refused():
        raise commit_on_loop()
    commit(ref())


def guard_session(session: Session) -> None:
    """Refuse database I/O through ``session`` on an event-loop thread: ORM
    statements (execute, get, lazy loads, refreshes), flushes and commits.

    The hooks shadow three methods on the instance: ``_execute_internal``,
    ``commit`` and ``_flush`` (the part of ``flush()`` that runs only when there is
    something to send).  No subclass, and no event listener: one on
    ``do_orm_execute`` would make every execution build an ORMExecuteState.  The
    check is one C call per statement on the worker.  The hooks reach the session
    through a weak reference: a strong one from its own ``__dict__`` would make
    every session a reference cycle, left to the garbage collector instead of
    being freed when its last reference goes."""
    ref = weakref.ref(session)
    namespace = session.__dict__
    if _EXECUTE in namespace or _FLUSH in namespace or "commit" in namespace:
        unbound = _sa_compat.unbound_method  # already shadowed on this instance
        execute, flush, commit = (unbound(session, n) for n in (_EXECUTE, _FLUSH, "commit"))
    else:
        cls = type(session)
        execute, flush, commit = getattr(cls, _EXECUTE), getattr(cls, _FLUSH), cls.commit
    namespace[_EXECUTE] = partial(_guarded_execute, ref, execute)
    namespace[_FLUSH] = partial(_guarded_flush, ref, flush)
    namespace["commit"] = partial(_guarded_commit, ref, commit)


_EXECUTE = _sa_compat.SESSION_EXECUTE
_FLUSH = _sa_compat.SESSION_FLUSH


def guard_dialect(dialect: Any) -> None:
    """The loop guard for Core statements and COMMITs, on one engine's dialect.

    Every statement SQLAlchemy sends reaches the driver through ``do_execute``,
    ``do_executemany`` or ``do_execute_no_params`` of the engine's dialect (its own
    instance, shared only with ``execution_options()`` copies of that engine), and
    every COMMIT through ``do_commit``.  Wrapping those costs one C call per
    statement off the loop; a ``before_cursor_execute`` listener would do the same
    check but switch every execution of the engine to SQLAlchemy's slower path.  The
    error is raised where a driver error would be, so SQLAlchemy cleans up as then.
    """
    if dialect.__dict__.get(_GUARDED_DIALECT):
        return
    _sa_compat.wrap_dialect_io(dialect, _refusing_on_loop)
    dialect.__dict__[_GUARDED_DIALECT] = True


_GUARDED_DIALECT = "_async_orm_guarded"


def _refusing_on_loop(method: Callable[..., None]) -> Callable[..., None]:
    """``method(cursor_or_connection, ...)``, refused on a thread running an event loop."""
    name = method.__name__

    def guarded(target: Any, *rest: Any, **kw: Any) -> None:
        if (
            _get_running_loop() is not None or ("trio" in _modules and trio_running() is not None)
        ) and loop_io_refused():
            if name == "do_commit":
                raise commit_on_loop()
            raise statement_on_loop(rest[0] if rest else "")
        method(target, *rest, **kw)

    return guarded


def checkout_on_loop() -> EventLoopIOError:
    """The error for a pool checkout (a connect, a reconnect) on the loop thread."""
    return EventLoopIOError(
        "A database connection was about to be checked out of the pool (or reconnected) "
        "on the event loop thread, which would block the event loop. Use the async API "
        "(async with engine.connect(), await session.execute(...)); attributes that may "
        "reconnect, such as AsyncConnection.info after an invalidation, are read after "
        "an awaited call has reconnected (await conn.execute(...)), or in await "
        "conn.run_sync(fn)."
    )


def statement_on_loop(statement: str) -> EventLoopIOError:
    """The error for a Core statement reaching the driver on the loop thread."""
    return EventLoopIOError(
        f"The statement {statement[:80]!r} was about to run on the event loop thread, "
        "which would block the event loop. Use the async API (await conn.execute(...), "
        "await session.execute(...)), or run sync code in await session.run_sync(fn) "
        "/ await conn.run_sync(fn)."
    )


def commit_on_loop() -> EventLoopIOError:
    return EventLoopIOError(
        "A COMMIT was about to run on the event loop thread, which would block the event "
        "loop. Await session.commit() / conn.commit() instead."
    )
