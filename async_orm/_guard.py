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
import threading
from asyncio import _get_running_loop
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm.state import InstanceState

from .exc import EventLoopIOError

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


def loop_io_refused() -> bool:
    """True when the current thread runs an event loop and no opt-out applies."""
    return _get_running_loop() is not None and not (_ENV_ALLOWED or _allowed.get())


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


def _guard_flush(session: Session, flush_context: Any, instances: Any) -> None:
    if loop_io_refused():
        raise EventLoopIOError(
            "A flush of this AsyncSession's pending changes was started on the event loop "
            "thread (autoflush or sync_session.flush()), which would block the event "
            "loop. Await session.flush() / session.commit(), or run sync code in await "
            "session.run_sync(fn)."
        )


#: called with each connection an async_orm session begins a transaction on
#: (set by async_orm.engine)
on_engine_reached: Any = None


def _engine_reached(session: Session, transaction: Any, connection: Any) -> None:
    # engines a session reaches without having been given them (ShardedSession's
    # shards, a get_bind() override, a bind set later) get instrumented here
    if on_engine_reached is not None:
        on_engine_reached(connection)


def _guard_commit(session: Session) -> None:
    # before the transaction changes state, so a refused commit leaves it usable
    if loop_io_refused():
        raise commit_on_loop()


_guarded_classes: dict[type[Session], type[Session]] = {}
_guarded_lock = threading.Lock()


def guarded_class(cls: type[Session]) -> type[Session]:
    """The subclass of ``cls`` that AsyncSession instantiates as its sync session:
    the same class with the guard's hooks (an ``_execute_internal`` override and
    flush/commit/begin listeners), so that sessions an application uses directly
    pay nothing for them."""
    guarded = _guarded_classes.get(cls)
    if guarded is not None:
        return guarded
    if cls.__dict__.get("_async_orm_guarded"):
        return cls  # already a guarded class (e.g. type(async_session.sync_session))
    with _guarded_lock:
        guarded = _guarded_classes.get(cls)
        if guarded is None:
            base_execute = cls._execute_internal

            # Session.execute/scalars/scalar, lazy loads and refreshes all come through
            # _execute_internal. Overriding it (rather than listening to do_orm_execute,
            # whose mere presence makes every ORM execution build an ORMExecuteState)
            # keeps the check at one C call per statement on the worker.
            def _execute_internal(
                self: Session, statement: Any, params: Any = None, *args: Any, **kw: Any
            ) -> Any:
                if _get_running_loop() is not None and loop_io_refused():
                    raise _execute_on_loop(statement, kw.get("execution_options"))
                return base_execute(self, statement, params, *args, **kw)

            namespace = {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                "_async_orm_guarded": True,
                "_execute_internal": _execute_internal,
            }
            guarded = type(cls.__name__, (cls,), namespace)
            event.listen(guarded, "before_flush", _guard_flush)
            event.listen(guarded, "before_commit", _guard_commit)
            event.listen(guarded, "after_begin", _engine_reached)
            _guarded_classes[cls] = guarded
    return guarded


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
