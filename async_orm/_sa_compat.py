"""Every private SQLAlchemy and asyncio name async_orm touches, in one place.

SQLAlchemy's ``ext/asyncio`` reaches into the sync objects it wraps; so does
async_orm.  Each touchpoint is a small function or a name listed here, and
``tests/test_sa_compat.py`` checks every one of them against the installed
SQLAlchemy, so an upgrade has one file to read and one test to run.

The result views (:mod:`async_orm.result`) subclass SQLAlchemy's
``FilterResult`` and use its private row machinery directly, on the hot path;
the names they rely on are listed in :data:`RESULT_INTERNALS` and checked here at
import time instead of being wrapped in functions.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.engine.cursor import CursorResult, FullyBufferedCursorFetchStrategy
from sqlalchemy.orm import Session
from sqlalchemy.orm import state as _orm_state
from sqlalchemy.pool import Pool, QueuePool

#: asyncio's C-level "is a loop running on this thread" (one C call, no exception)
get_running_loop: Final[Callable[[], asyncio.AbstractEventLoop | None]] = asyncio._get_running_loop


# --------------------------------------------------------------------------
# pools


def pool_capacity(pool: Pool) -> int | None:
    """How many connections ``pool`` hands out at once, or ``None`` for no bound
    (NullPool, QueuePool with ``max_overflow=-1``)."""
    if isinstance(pool, QueuePool):
        size = pool.size()
        overflow: int = pool._max_overflow
        if size <= 0 or overflow < 0:
            return None
        return max(1, size + overflow)
    from sqlalchemy.pool import AssertionPool, SingletonThreadPool, StaticPool

    if isinstance(pool, (StaticPool, AssertionPool)):
        return 1
    if isinstance(pool, SingletonThreadPool):
        return max(1, pool.size)
    return None


_NOT_GIVEN: Final = object()


def pool_timeout(pool: Pool) -> float | object | None:
    """The pool's own checkout timeout (``pool_timeout=``), ``None`` for "wait as
    long as it takes", or :data:`_NOT_GIVEN` for pools that never wait."""
    if isinstance(pool, QueuePool):
        timeout: float | None = pool._timeout
        return timeout
    return _NOT_GIVEN


def wrap_pool_doors(
    pool: Pool,
    before: Callable[[Pool], Any],
    checked_out: Callable[[Pool, Any, Any, Any], None],
    returning: Callable[[Any], None],
    marker: str,
) -> None:
    """Put async_orm's bookkeeping on ``pool``'s two doors (once per pool instance).

    ``pool.connect()`` is the one door out: ``Engine.raw_connection()`` (and so every
    ``Connection``, reconnects included) checks out through it.  It calls
    ``before(pool)`` first (where no pool event exists); when that returns an owner
    and the checkout is the connection's first (not a re-checkout of the same
    ``_ConnectionFairy``), ``checked_out(pool, owner, record, dbapi_connection)``.
    ``_do_return_conn()`` is the one door back, for a checkin and a ``detach()``
    alike: it calls ``returning(record)`` first.

    Not the pool's checkout/checkin events: a checkout listener sends every checkout
    through SQLAlchemy's slower reconnect-on-checkout loop, and a listener costs an
    event dispatch on each door."""
    if pool.__dict__.get(marker):
        return
    connect = pool.connect
    do_return_conn = pool._do_return_conn

    def checkout() -> Any:
        owner = before(pool)
        fairy = connect()
        if owner is not None and fairy._counter == 1:
            checked_out(pool, owner, fairy._connection_record, fairy.dbapi_connection)
        return fairy

    def give_back(record: Any) -> None:
        returning(record)
        do_return_conn(record)

    pool.__dict__["connect"] = checkout
    pool.__dict__["_do_return_conn"] = give_back
    pool.__dict__[marker] = True


# --------------------------------------------------------------------------
# dialects: the one place every Core statement and COMMIT reaches the driver

DIALECT_IO_METHODS: Final = ("do_execute", "do_executemany", "do_execute_no_params", "do_commit")


def wrap_dialect_io(
    dialect: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Replace the dialect instance's driver-facing methods by ``wrap(method)``."""
    for name in DIALECT_IO_METHODS:
        setattr(dialect, name, wrap(getattr(dialect, name)))


# --------------------------------------------------------------------------
# sessions


def unbound_method(target: Any, name: str) -> Callable[..., Any]:
    """``target.<name>`` as a function taking ``target`` first, holding no reference to
    it: the class's function, or (shadowed on the instance already) a caller of that."""
    own = target.__dict__.get(name)
    if own is None:
        function: Callable[..., Any] = getattr(type(target), name)
        return function

    def call_own(_target: Any, *args: Any, **kw: Any) -> Any:
        return own(*args, **kw)

    return call_own


def override_methods(
    target: Any, makers: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]
) -> None:
    """Shadow methods of one object by ``make(original)``, ``original`` calling the
    method as it was: a Session's ``get_bind``, an Engine's ``dispose``.  SQLAlchemy
    calls them as ``self.<name>(...)``, so the instance attribute wins, with no
    subclass.  ``original`` reaches ``target`` through a weak reference, so the
    override (in ``target``'s own ``__dict__``) makes no reference cycle."""
    ref = weakref.ref(target)
    namespace = target.__dict__
    for name, make in makers.items():
        namespace[name] = make(_weakly_bound(ref, unbound_method(target, name)))


def _weakly_bound(ref: Callable[[], Any], function: Callable[..., Any]) -> Callable[..., Any]:
    def original(*args: Any, **kw: Any) -> Any:
        return function(ref(), *args, **kw)

    return original


def session_has_changes(session: Session) -> bool:
    """True when a flush of ``session`` would send something (``Session._is_clean``)."""
    return not session._is_clean()


#: the Session method every ORM statement (execute, get, lazy load, refresh) goes through
SESSION_EXECUTE: Final = "_execute_internal"
#: the Session method ``flush()`` calls when, and only when, there is something to flush
SESSION_FLUSH: Final = "_flush"


def set_async_session_provider(provider: Callable[[Session], Any]) -> None:
    """Make ``inspect(obj).async_session`` answer through ``provider``, falling back
    to SQLAlchemy's own ``sqlalchemy.ext.asyncio`` provider when one is installed."""
    previous = getattr(_orm_state, "_async_provider", None)
    if getattr(previous, "_async_orm", False):
        return

    def provide(session: Session) -> Any:
        found = provider(session)
        if found is None and previous is not None:
            return previous(session)
        return found

    provide._async_orm = True  # type: ignore[attr-defined]
    _orm_state._async_provider = provide  # type: ignore[attr-defined]


def refuse_inspection(cls: type, message: str) -> None:
    """Make ``sqlalchemy.inspect(obj)`` of a ``cls`` instance raise
    NoInspectionAvailable with ``message`` (``inspection._inspects``)."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import inspection

    @inspection._inspects(cls)
    def refuse(subject: Any) -> Any:
        raise sa_exc.NoInspectionAvailable(message)


# --------------------------------------------------------------------------
# results


def is_server_side(result: CursorResult[Any]) -> bool:
    """True when ``result`` holds a server-side (streaming) cursor."""
    return bool(result.context._is_server_side)


def buffer_cursor_result(result: CursorResult[Any]) -> None:
    """Fetch every row of ``result`` now (on the worker) and soft-close its DBAPI
    cursor, so reading it later touches neither the driver nor the connection."""
    cursor = result.cursor
    if cursor is None or not result.returns_rows:
        return
    strategy = result.cursor_strategy
    rows = strategy.fetchall(result, cursor)
    result.cursor_strategy = FullyBufferedCursorFetchStrategy(
        None,
        alternate_description=strategy.alternate_cursor_description,
        initial_buffer=rows,
    )


def raw_cursor_result(result: Result[Any]) -> CursorResult[Any] | None:
    """The CursorResult under an ORM result (``Result.raw``), if any."""
    return getattr(result, "raw", None)


#: private members of SQLAlchemy's Result machinery that async_orm.result uses
RESULT_INTERNALS: Final = {
    Result: (
        "_metadata",
        "_unique_filter_state",
        "_source_supports_scalars",
        "_yield_per",
        "_row_getter",
        "_manyrow_getter",
        "_fetchmany_impl",
        "_allrows",
        "_only_one_row",
        "_column_slices",
        "_set_memoized_attribute",
        "_generate",
        "_post_creational_filter",
    ),
}


def missing_internals() -> list[str]:
    """The names of :data:`RESULT_INTERNALS` (and the other touchpoints) that the
    installed SQLAlchemy lacks; empty when everything is where it is expected."""
    # QueuePool's _max_overflow and _timeout are instance attributes: the tests read
    # them on a pool (tests/test_sa_compat.py)
    missing = []
    for cls, names in RESULT_INTERNALS.items():
        for name in names:
            if not hasattr(cls, name) and name not in getattr(cls, "__annotations__", {}):
                missing.append(f"{cls.__name__}.{name}")
    for owner, name in (
        (Session, SESSION_EXECUTE),
        (Session, SESSION_FLUSH),
        (Session, "_is_clean"),
        (Engine, "raw_connection"),
        (Connection, "_trans_context_manager"),
        (_orm_state, "_async_provider"),
        (asyncio, "_get_running_loop"),
    ):
        if not hasattr(owner, name):
            missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
    return missing


# --------------------------------------------------------------------------
# pools: async_orm.engine's AsyncAdaptedQueuePool has QueuePool's thread-safe queue

#: the queue class of QueuePool (``QueuePool._queue_class``), thread-safe
THREAD_SAFE_QUEUE: Final = QueuePool._queue_class


def make_pool_thread_safe(pool: QueuePool, cls: type[QueuePool]) -> None:
    """Turn an unused AsyncAdaptedQueuePool into ``cls`` (its thread-safe subclass):
    the same settings, QueuePool's queue in ``pool._pool``."""
    from sqlalchemy import exc as sa_exc

    old = pool._pool
    if old.qsize() or pool.checkedout():
        raise sa_exc.ArgumentError(
            f"{type(pool).__name__} {pool!r} has already handed out connections; give an "
            "async_orm engine a new pool (or poolclass=...)."
        )
    pool._pool = THREAD_SAFE_QUEUE(old.maxsize, use_lifo=old.use_lifo)
    pool.__class__ = cls
