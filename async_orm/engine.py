"""AsyncEngine, AsyncConnection and AsyncTransaction over sync drivers.

Mirrors ``sqlalchemy.ext.asyncio.engine``: the same classes, methods and
signatures.  ``create_async_engine`` takes *sync* URLs
(``postgresql+psycopg://``, ``sqlite://``, ``mysql+pymysql://``) and an
:class:`AsyncEngine` can wrap an :class:`~sqlalchemy.engine.Engine` an
application already has.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any, Concatenate, Generic, NoReturn, TypeVar, overload

from sqlalchemy import exc as sa_exc
from sqlalchemy import util
from sqlalchemy.engine import Connection, Dialect, Engine, ScalarResult, create_engine, make_url
from sqlalchemy.engine import create_pool_from_url as _sa_create_pool_from_url
from sqlalchemy.engine.base import NestedTransaction
from sqlalchemy.engine.cursor import CursorResult
from sqlalchemy.engine.url import URL
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool, SingletonThreadPool, StaticPool
from typing_extensions import ParamSpec, TypeVarTuple, Unpack

from . import _guard, _sa_compat, _worker
from ._worker import CONNECT, END, ROLLBACK, SAVEPOINT_ROLLBACK, STATEMENT, STREAM, USER
from .base import ReversibleProxy, proxy_for, proxy_of
from .exc import (
    AsyncContextAlreadyStarted,
    AsyncContextNotStarted,
    AsyncDriverURLError,
    AsyncMethodRequired,
)
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.base import Transaction
    from sqlalchemy.engine.interfaces import (
        CoreExecuteOptionsParameter,
        Dialect,
        IsolationLevel,
        _CoreAnyExecuteParams,
        _CoreSingleExecuteParams,
        _DBAPIAnyExecuteParams,
        _ExecuteOptions,
    )
    from sqlalchemy.pool import PoolProxiedConnection
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.selectable import TypedReturnsRows

_T = TypeVar("_T")
_P = ParamSpec("_P")
_Ts = TypeVarTuple("_Ts")
TupleAny = tuple[Any, ...]

__all__ = [
    "AsyncConnectable",
    "AsyncConnection",
    "AsyncEngine",
    "AsyncTransaction",
    "ThreadSafeAsyncAdaptedQueuePool",
    "async_engine_from_config",
    "create_async_engine",
    "create_async_pool_from_url",
]

DEFAULT_WORKER_TIMEOUT = _worker.DEFAULT_WORKER_TIMEOUT

_STREAM = util.immutabledict({"stream_results": True})


# --------------------------------------------------------------------------
# URLs


_SYNC_DRIVER_FOR = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiosqlite": None,
    "pysqlcipher_async": None,
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
    "oracledb_async": "oracledb",
    "aioodbc": "pyodbc",
}


def _check_sync_url(url: str | URL) -> URL:
    u = make_url(url)
    try:
        is_async = bool(u.get_dialect().is_async)
    except sa_exc.NoSuchModuleError:
        is_async = u.get_driver_name() in _SYNC_DRIVER_FOR
    if is_async:
        driver = u.get_driver_name()
        sync_driver = _SYNC_DRIVER_FOR.get(driver)
        name = u.get_backend_name()
        fixed = u.set(drivername=f"{name}+{sync_driver}" if sync_driver else name)
        raise AsyncDriverURLError(
            f"The URL {u.render_as_string(hide_password=True)!r} names the async driver "
            f"{driver!r}. async_orm runs SQLAlchemy on worker threads with sync drivers, "
            f"so use {fixed.render_as_string(hide_password=True)!r} instead."
        )
    return u


def _sqlite_memory_kind(u: URL) -> str | None:
    """ "private" for ``sqlite://`` / ``:memory:`` (one database per connection in
    sqlite3), "named" for a ``file:...?mode=memory`` URI, None for a file."""
    if u.get_backend_name() != "sqlite":
        return None
    db = u.database
    if db in (None, "", ":memory:"):
        return "private"
    if "mode=memory" in db or u.query.get("mode") == "memory":
        return "named"
    return None


def _share_sqlite_memory(u: URL, kw: dict[str, Any]) -> None:
    """An in-memory SQLite database that every worker thread shares.

    sqlite3 gives each connection to ``sqlite://`` a private database, so each
    session would see its own.  Instead, ``sqlite://`` becomes one named database of
    SQLite's ``memdb`` VFS, which connections of this process share with SQLite's
    ordinary locking (writers are serialized, waiting up to the driver's ``timeout``),
    behind the default queue pool, so several sessions are open at once.  A
    ``file:...?mode=memory`` URI keeps its own sharing rules and gets the same pool.
    One connection is kept open for the engine's lifetime, so the database outlives
    its sessions.
    """
    kind = _sqlite_memory_kind(u)
    if kind is None or {"poolclass", "pool", "creator"} & kw.keys():
        return
    connect_args = dict(kw.get("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    kw["poolclass"] = ThreadSafeAsyncAdaptedQueuePool
    if kind == "private":
        target = f"file:/async_orm-{uuid.uuid4().hex}?vfs=memdb"
        timeout = float(connect_args.pop("timeout", 5.0))
        check = bool(connect_args.pop("check_same_thread"))
        if connect_args:
            raise sa_exc.ArgumentError(
                f"connect_args {sorted(connect_args)} are not supported for an in-memory "
                "SQLite URL; pass poolclass=... to choose the pool yourself."
            )

        def creator() -> sqlite3.Connection:
            return sqlite3.connect(target, uri=True, timeout=timeout, check_same_thread=check)

        kw["creator"] = creator
        kw["connect_args"] = {}
    else:
        kw["connect_args"] = connect_args


def _behind_pgbouncer(u: URL, kw: dict[str, Any]) -> None:
    """What psycopg needs behind PgBouncer's transaction pooling (see the scaling page)."""
    if u.get_backend_name() != "postgresql" or u.get_driver_name() != "psycopg":
        raise sa_exc.ArgumentError(
            f"pgbouncer=True is for postgresql+psycopg:// URLs, not {u.drivername!r}."
        )
    connect_args = dict(kw.get("connect_args", {}))
    if "options" in connect_args:
        raise sa_exc.ArgumentError(
            "pgbouncer=True: PgBouncer refuses the startup parameter 'options' "
            f"({connect_args['options']!r}); set it on the role or database instead "
            "(ALTER ROLE ... SET ...), or with SET LOCAL inside each transaction."
        )
    connect_args.setdefault("prepare_threshold", None)
    kw["connect_args"] = connect_args


def _keep_sqlite_memory_alive(sync_engine: Engine) -> None:
    """Hold one connection of an in-memory database for the engine's lifetime."""
    if _sqlite_memory_kind(sync_engine.url) is None:
        return
    with _guard.allow_loop_io():  # an in-memory connect: no I/O to wait for
        keeper = sync_engine.raw_connection()
    weakref.finalize(sync_engine, keeper.close)


# --------------------------------------------------------------------------
# pools


class ThreadSafeAsyncAdaptedQueuePool(AsyncAdaptedQueuePool):
    """The :class:`~sqlalchemy.pool.AsyncAdaptedQueuePool` of an async_orm engine.

    The pool of an asyncio engine, as in SQLAlchemy, and its default pool; but its
    connections are checked out and in on worker threads, so its queue is QueuePool's
    thread-safe one (SQLAlchemy's asyncio queue needs greenlet and one event loop).
    ``poolclass=AsyncAdaptedQueuePool`` and ``pool=AsyncAdaptedQueuePool(...)`` become
    this pool.
    """

    _is_asyncio = False  # it serves a sync dialect on threads
    _queue_class = _sa_compat.THREAD_SAFE_QUEUE


_thread_safe_classes: dict[type[QueuePool], type[QueuePool]] = {
    AsyncAdaptedQueuePool: ThreadSafeAsyncAdaptedQueuePool
}


def _thread_safe_pool_class(cls: type[QueuePool]) -> type[QueuePool]:
    """``cls`` (AsyncAdaptedQueuePool or an application's subclass of it), thread-safe."""
    if issubclass(cls, ThreadSafeAsyncAdaptedQueuePool):
        return cls
    found = _thread_safe_classes.get(cls)
    if found is None:
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        found = _thread_safe_classes[cls] = type(
            cls.__name__, (ThreadSafeAsyncAdaptedQueuePool, cls), namespace
        )
    return found


def _refuse_pool_class(cls: type[Pool]) -> NoReturn:
    why = (
        "it would give each session's worker thread a connection of its own (and, for "
        "in-memory SQLite, a database of its own)"
        if issubclass(cls, SingletonThreadPool)
        else "the queue pool of an asyncio engine is AsyncAdaptedQueuePool (the default; "
        "in async_orm it has QueuePool's thread-safe queue)"
    )
    raise sa_exc.ArgumentError(
        f"Pool class {cls.__name__} cannot be used with asyncio engine: {why}. Pass "
        "poolclass=AsyncAdaptedQueuePool, NullPool or StaticPool, or leave it out; or make "
        "the sync engine yourself and wrap it: AsyncEngine(create_engine(url, "
        f"poolclass={cls.__name__})).",
        code="pcls",
    )


def _async_pool_rules(u: URL, kw: dict[str, Any]) -> None:
    """The pool of an asyncio engine, as SQLAlchemy's rules give it, for a sync dialect:
    AsyncAdaptedQueuePool by default and when asked for (thread-safe here), QueuePool
    and SingletonThreadPool refused; NullPool, StaticPool, AssertionPool as given."""
    pool = kw.get("pool")
    if pool is not None:
        if isinstance(pool, AsyncAdaptedQueuePool):
            _sa_compat.make_pool_thread_safe(pool, _thread_safe_pool_class(type(pool)))
        elif isinstance(pool, (QueuePool, SingletonThreadPool)):
            _refuse_pool_class(type(pool))
        return
    poolclass = kw.get("poolclass")
    if poolclass is not None:
        if issubclass(poolclass, AsyncAdaptedQueuePool):
            kw["poolclass"] = _thread_safe_pool_class(poolclass)
        elif issubclass(poolclass, (QueuePool, SingletonThreadPool)):
            _refuse_pool_class(poolclass)
        return
    try:
        dialect_cls: Any = u.get_dialect()
        default = dialect_cls.get_pool_class(u)
    except sa_exc.NoSuchModuleError:
        return  # create_engine says what is missing
    if issubclass(default, QueuePool):
        kw["poolclass"] = ThreadSafeAsyncAdaptedQueuePool
    elif issubclass(default, SingletonThreadPool):
        kw["poolclass"] = StaticPool  # in-memory SQLite with a creator: one connection


def _async_engine_args(u: URL, kw: dict[str, Any]) -> None:
    """create_async_engine()'s own arguments, made into create_engine()'s."""
    if "async_creator" in kw:
        if "creator" in kw:
            raise sa_exc.ArgumentError(
                "Can only specify one of 'async_creator' or 'creator', not both."
            )
        raise sa_exc.ArgumentError(
            "async_creator is for async drivers; async_orm runs sync drivers, so pass a "
            "sync connection factory as creator=... instead."
        )
    if kw.pop("pgbouncer", False):
        _behind_pgbouncer(u, kw)
    _share_sqlite_memory(u, kw)
    _async_pool_rules(u, kw)


def create_async_engine(url: str | URL, **kw: Any) -> AsyncEngine:
    """Create an :class:`AsyncEngine` from a sync database URL.

    Takes the arguments of :func:`sqlalchemy.create_engine`, plus:

    :param max_workers: how many sessions/connections of this engine may hold a
        worker thread at once.  Defaults to the pool's capacity
        (``pool_size + max_overflow``), or 32 for pools without a bound.
    :param worker_timeout: seconds a new session waits for a free worker slot
        before :class:`~async_orm.exc.WorkerSlotTimeout`; defaults to the pool's
        ``pool_timeout`` (``None``: wait as long as it takes).
    :param pgbouncer: ``True`` when the URL points at PgBouncer in transaction (or
        statement) pooling mode, which async_orm cannot detect: psycopg's prepared
        statements are turned off (``prepare_threshold=None``), since the next
        transaction may run on a server connection that does not have them, and
        ``options`` in ``connect_args`` (refused by PgBouncer) is an error.

    An async driver's URL (``postgresql+asyncpg://``) is refused with an error
    naming the sync URL to use.  In-memory SQLite (``sqlite://``) is one database
    that every session sees, with several sessions open at once.
    """
    if kw.get("server_side_cursors", False):
        raise AsyncMethodRequired(
            "Can't set server_side_cursors for async engine globally; "
            "use the connection.stream() method for an async "
            "streaming result set"
        )
    max_workers = kw.pop("max_workers", None)
    worker_timeout = kw.pop("worker_timeout", _worker._UNSET)
    u = _check_sync_url(url)
    _async_engine_args(u, kw)
    sync_engine = create_engine(u, **kw)
    engine = AsyncEngine(sync_engine, max_workers=max_workers, worker_timeout=worker_timeout)
    _keep_sqlite_memory_alive(sync_engine)
    return engine


def async_engine_from_config(
    configuration: dict[str, Any], prefix: str = "sqlalchemy.", **kwargs: Any
) -> AsyncEngine:
    """Create an :class:`AsyncEngine` from a configuration dictionary, like
    :func:`sqlalchemy.engine_from_config`: keys starting with ``prefix`` are
    the engine's arguments (``sqlalchemy.url``, ``sqlalchemy.echo``, ...)."""
    options = {
        key[len(prefix) :]: value for key, value in configuration.items() if key.startswith(prefix)
    }
    options["_coerce_config"] = True
    options.update(kwargs)
    url = options.pop("url")
    return create_async_engine(url, **options)


def create_async_pool_from_url(url: str | URL, **kwargs: Any) -> Pool:
    """Create a connection pool for a sync URL, like
    :func:`sqlalchemy.create_pool_from_url`, with the pool rules of
    :func:`create_async_engine`; async driver URLs are refused."""
    return _create_pool_from_url(url, **kwargs, _is_async=True)


def _create_pool_from_url(url: str | URL, **kwargs: Any) -> Pool:
    """:func:`sqlalchemy.create_pool_from_url`; with ``_is_async=True`` (as SQLAlchemy
    calls it for an asyncio engine's pool), the sync URL and pool rules of one."""
    if kwargs.pop("_is_async", False):
        u = _check_sync_url(url)
        _async_engine_args(u, kwargs)
        return _sa_create_pool_from_url(u, **kwargs)
    return _sa_create_pool_from_url(url, **kwargs)


def _async_engine(sync_engine: Engine) -> AsyncEngine:
    return proxy_for(sync_engine, lambda: AsyncEngine(sync_engine))


async def _run_detached(fn: Callable[..., _T], *args: Any) -> _T:
    """Engine-level work (dispose, raw_connection) on a pooled worker that takes no
    slot, so it works while every slot is busy."""
    return await _worker.detached().run(_worker.DETACHED, fn, *args)


# --------------------------------------------------------------------------
# StartableContext, AsyncConnectable


class AsyncConnectable(ReversibleProxy):
    """Base of :class:`AsyncEngine` and :class:`AsyncConnection`: something a
    session can be bound to."""

    __slots__ = ()

    sync_engine: Engine

    @classmethod
    def _no_async_engine_events(cls) -> NoReturn:
        # SQLAlchemy's event registry calls this for a target that has it
        raise NotImplementedError(
            "asynchronous events are not implemented at this time.  Apply "
            "synchronous listeners to the AsyncEngine.sync_engine or "
            "AsyncConnection.sync_connection attributes (they run on the worker thread)."
        )


class StartableContext(Generic[_T]):
    """Awaitable, or usable as ``async with``: ``start()`` does the work."""

    __slots__ = ()

    async def start(self, is_ctxmanager: bool = False) -> _T:
        raise NotImplementedError()

    def __await__(self) -> Generator[Any, Any, _T]:
        return self.start().__await__()

    async def __aenter__(self) -> _T:
        return await self.start(is_ctxmanager=True)

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        raise NotImplementedError()

    def _raise_for_not_started(self) -> NoReturn:
        raise AsyncContextNotStarted(
            f"{self.__class__.__name__} context has not been started and object has "
            "not been awaited. Use 'await' or 'async with' on it first."
        )


class _ResultContext(Generic[_T]):
    """What ``stream()`` returns: await it, or ``async with`` it (closing the
    result on exit)."""

    __slots__ = ("_coro", "_result")

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._result: Any = None

    def __await__(self) -> Generator[Any, Any, _T]:
        return self._coro.__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> _T:
        self._result = await self._coro
        return self._result  # type: ignore[no-any-return]

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if self._result is not None:
            await self._result.close()


# --------------------------------------------------------------------------
# AsyncEngine


class AsyncEngine(AsyncConnectable):
    """An asyncio front for a sync :class:`~sqlalchemy.engine.Engine`.

    Create one with :func:`create_async_engine`, or wrap an engine you already
    have: ``AsyncEngine(sync_engine)``.  Each :class:`AsyncConnection` it hands
    out runs on a worker thread of its own.
    """

    __slots__ = ("__weakref__", "_limiter", "sync_engine")

    sync_engine: Engine

    def __init__(
        self,
        sync_engine: Engine,
        *,
        max_workers: int | None = None,
        worker_timeout: float | Any | None = _worker._UNSET,
    ) -> None:
        if not isinstance(sync_engine, Engine):
            raise sa_exc.ArgumentError(
                f"AsyncEngine() takes a sync sqlalchemy Engine, not {type(sync_engine).__name__}"
            )
        if sync_engine.dialect.is_async:
            _check_sync_url(sync_engine.url)
        self.sync_engine = sync_engine
        self._limiter = _worker.limiter_for(sync_engine, max_workers, worker_timeout)
        _worker.instrument(sync_engine)
        if proxy_of(sync_engine) is None:
            self._assign_proxied(sync_engine)

    # -- proxy comparisons ------------------------------------------------------

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Engine) -> AsyncEngine:
        return AsyncEngine(target)

    @property
    def _proxied(self) -> Engine:
        return self.sync_engine

    def __hash__(self) -> int:
        return id(self.sync_engine)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncEngine) and self.sync_engine is other.sync_engine

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        return f"AsyncEngine({self.url.render_as_string(hide_password=True)})"

    # -- connections ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """``async with engine.begin() as conn:`` a connection in a transaction,
        committed on success and rolled back on error."""
        conn = self.connect()
        async with conn, conn.begin():
            yield conn

    def connect(self) -> AsyncConnection:
        """A new :class:`AsyncConnection`; await it or use ``async with``."""
        return AsyncConnection(self)

    async def raw_connection(self) -> PoolProxiedConnection:
        """A DBAPI connection checked out of the pool (checked out on a worker)."""
        return await _run_detached(self.sync_engine.raw_connection)

    async def dispose(self, close: bool = True) -> None:
        """Dispose of the pool, on a worker thread; see :meth:`Engine.dispose`."""
        await _run_detached(self.sync_engine.dispose, close)

    # -- options ---------------------------------------------------------------

    def execution_options(self, **opt: Any) -> AsyncEngine:
        """A copy of this engine with the given execution options (sharing its
        pool and worker slots)."""
        return AsyncEngine(self.sync_engine.execution_options(**opt))

    def get_execution_options(self) -> _ExecuteOptions:
        """The execution options of this engine."""
        return self.sync_engine.get_execution_options()

    def update_execution_options(self, **opt: Any) -> None:
        """Update this engine's default execution options in place."""
        self.sync_engine.update_execution_options(**opt)

    def clear_compiled_cache(self) -> None:
        """Clear the compiled-statement cache of this engine's dialect."""
        self.sync_engine.clear_compiled_cache()

    # -- plain attributes ------------------------------------------------------

    @property
    def url(self) -> URL:
        """The engine's :class:`~sqlalchemy.engine.URL`."""
        return self.sync_engine.url

    @url.setter
    def url(self, attr: URL) -> None:
        self.sync_engine.url = attr

    @property
    def pool(self) -> Pool:
        """The engine's connection pool."""
        return self.sync_engine.pool

    @pool.setter
    def pool(self, attr: Pool) -> None:
        self.sync_engine.pool = attr

    @property
    def dialect(self) -> Dialect:
        """The engine's dialect."""
        return self.sync_engine.dialect

    @dialect.setter
    def dialect(self, attr: Dialect) -> None:
        self.sync_engine.dialect = attr

    @property
    def engine(self) -> Engine:
        """The sync :class:`~sqlalchemy.engine.Engine` (same as :attr:`sync_engine`)."""
        return self.sync_engine.engine

    @property
    def name(self) -> str:
        """The dialect's name, e.g. ``"postgresql"``."""
        return self.sync_engine.name

    @property
    def driver(self) -> str:
        """The DBAPI driver's name, e.g. ``"psycopg"``."""
        return self.sync_engine.driver

    @property
    def echo(self) -> Any:
        """Whether SQL is logged (see ``create_engine(echo=...)``)."""
        return self.sync_engine.echo

    @echo.setter
    def echo(self, attr: Any) -> None:
        self.sync_engine.echo = attr


# --------------------------------------------------------------------------
# AsyncConnection


def _buffer_result(
    result: CursorResult[Unpack[TupleAny]], method: str, owner: str = "AsyncConnection"
) -> CursorResult[Unpack[TupleAny]]:
    """Runs on the worker: fetch every row now, so that reading the result on the
    event loop touches neither the driver nor the connection."""
    if _sa_compat.is_server_side(result):
        result.close()
        raise AsyncMethodRequired(
            f"Can't use the {owner}.{method}() method with a server-side cursor. Use "
            f"the {owner}.stream() method for an async streaming result set."
        )
    cursor = result.cursor
    _sa_compat.buffer_cursor_result(result)
    result.cursor = cursor  # closed, but there, as an async driver's buffered result has it
    return result


def _await_required(dialect: Dialect) -> NoReturn:
    raise sa_exc.AwaitRequired(
        "The current operation required an async execution but none was in progress: "
        f"the dialect {dialect.name}+{dialect.driver} says it is async "
        "(dialect.is_async), and async_orm runs the statements of sync drivers on worker "
        "threads. Use the sync driver's dialect (for example postgresql+psycopg://), or "
        "run_sync() for code that runs the driver synchronously."
    )


def _execute_buffered(
    conn: Connection, statement: Any, parameters: Any, execution_options: Any
) -> CursorResult[Unpack[TupleAny]]:
    if conn.dialect.is_async:
        _await_required(conn.dialect)
    result = conn.execute(statement, parameters, execution_options=execution_options)
    return _buffer_result(result, "execute")


def _exec_driver_sql_buffered(
    conn: Connection, statement: str, parameters: Any, execution_options: Any
) -> CursorResult[Unpack[TupleAny]]:
    if conn.dialect.is_async:
        _await_required(conn.dialect)
    result = conn.exec_driver_sql(statement, parameters, execution_options)
    return _buffer_result(result, "exec_driver_sql")


def _nothing() -> None:
    return None


def _hand_out_raw_connection(conn: AsyncConnection) -> PoolProxiedConnection:
    if conn._owns_runner:
        conn._runner.finalizer = None  # see get_raw_connection()
    return conn._connection_for().connection


class AsyncConnection(StartableContext["AsyncConnection"], AsyncConnectable):
    """An asyncio front for a sync :class:`~sqlalchemy.engine.Connection`.

    Get one from :meth:`AsyncEngine.connect` (``async with engine.connect() as
    conn``) or :meth:`AsyncSession.connection`.  It holds a worker thread from
    ``start()`` until ``close()``; every call runs there, in order.
    """

    __slots__ = (
        "__weakref__",
        "_owns_runner",
        "_runner",
        "engine",
        "sync_connection",
        "sync_engine",
    )

    def __init__(self, async_engine: AsyncEngine, sync_connection: Connection | None = None):
        self.engine = async_engine
        self.sync_engine = async_engine.sync_engine
        self.sync_connection = sync_connection
        self._runner = _worker.new_runner([self.sync_engine], "AsyncConnection", reusable=False)
        self._owns_runner = True
        if sync_connection is not None:
            self._assign_proxied(sync_connection)

    @classmethod
    def _for_session(
        cls, engine: AsyncEngine, sync_connection: Connection, runner: _worker.Runner
    ) -> AsyncConnection:
        """A connection that shares a session's runner (and so its thread)."""
        conn = cls.__new__(cls)
        conn.engine = engine
        conn.sync_engine = engine.sync_engine
        conn.sync_connection = sync_connection
        conn._runner = runner
        conn._owns_runner = False
        return conn

    # -- proxy comparisons ------------------------------------------------------

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Connection) -> AsyncConnection:
        return AsyncConnection(AsyncEngine._retrieve_proxy_for_target(target.engine), target)

    @property
    def _proxied(self) -> Connection:
        return self._connection_for()

    def __hash__(self) -> int:
        return id(self.sync_connection) if self.sync_connection is not None else id(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AsyncConnection)
            and self.sync_connection is not None
            and self.sync_connection is other.sync_connection
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def _connection_for(self) -> Connection:
        conn = self.sync_connection
        if conn is None:
            self._raise_for_not_started()
        return conn

    # -- lifecycle -------------------------------------------------------------

    async def start(self, is_ctxmanager: bool = False) -> AsyncConnection:
        """Connect (check a connection out of the pool) on this connection's worker."""
        if self.sync_connection is not None:
            raise AsyncContextAlreadyStarted(
                "This AsyncConnection was already started (awaited or entered with "
                "'async with'). Start a connection once: use the one you have, or get a "
                "new one from engine.connect()."
            )
        try:
            conn = await self._runner.run(CONNECT, self.sync_engine.connect)
        except BaseException:
            await self._runner.run(END, _nothing)  # give the slot back now (shielded)
            raise
        self.sync_connection = conn
        self._assign_proxied(conn)
        self._runner.finalizer = conn.close  # closes it on its worker if never closed
        return self

    async def close(self) -> None:
        """Close the connection (returning it to the pool) and release its worker.
        A cancellation cannot interrupt closing."""
        if self.sync_connection is not None:
            await self._runner.run(self._end_kind, self.sync_connection.close)

    @property
    def _end_kind(self) -> _worker.Kind:
        # a connection that shares a session's worker leaves its end to the session
        return END if self._owns_runner else ROLLBACK

    async def aclose(self) -> None:
        """Same as :meth:`close`, for :func:`contextlib.aclosing`."""
        await self.close()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.close()

    async def invalidate(self, exception: BaseException | None = None) -> None:
        """Invalidate the underlying DBAPI connection; see :meth:`Connection.invalidate`."""
        await self._runner.run(ROLLBACK, self._connection_for().invalidate, exception)

    # -- transactions ----------------------------------------------------------

    def begin(self) -> AsyncTransaction:
        """A transaction: ``async with conn.begin():`` or ``await conn.begin()``."""
        self._connection_for()
        return AsyncTransaction(self)

    def begin_nested(self) -> AsyncTransaction:
        """A SAVEPOINT: ``async with conn.begin_nested():``."""
        self._connection_for()
        return AsyncTransaction(self, nested=True)

    async def commit(self) -> None:
        """Commit the transaction in progress."""
        await self._runner.run(STATEMENT, self._connection_for().commit)

    async def rollback(self) -> None:
        """Roll back the transaction in progress (also ends the state a cancelled call
        left)."""
        await self._runner.run(ROLLBACK, self._connection_for().rollback)

    def in_transaction(self) -> bool:
        """True if a transaction is in progress."""
        return self._connection_for().in_transaction()

    def in_nested_transaction(self) -> bool:
        """True if a SAVEPOINT is in progress."""
        return self._connection_for().in_nested_transaction()

    def get_transaction(self) -> AsyncTransaction | None:
        """The :class:`AsyncTransaction` in progress, if any."""
        trans = self._connection_for().get_transaction()
        return AsyncTransaction._wrap(self, trans) if trans is not None else None

    def get_nested_transaction(self) -> AsyncTransaction | None:
        """The innermost SAVEPOINT :class:`AsyncTransaction` in progress, if any."""
        trans = self._connection_for().get_nested_transaction()
        return AsyncTransaction._wrap(self, trans) if trans is not None else None

    # -- options and attributes ---------------------------------------------------

    async def execution_options(self, **opt: Any) -> AsyncConnection:
        """Set execution options on this connection (in place) and return it."""
        await self._runner.run(STATEMENT, self._connection_for().execution_options, **opt)
        return self

    async def get_raw_connection(self) -> PoolProxiedConnection:
        """The pooled DBAPI connection this connection uses.  It is then the caller's
        too: if this AsyncConnection is garbage-collected unclosed, its worker and slot
        come back, but the connection is not closed under the caller (as in SQLAlchemy,
        it returns to the pool when it is closed, or garbage-collected, itself)."""
        return await self._runner.run(STATEMENT, _hand_out_raw_connection, self)

    async def get_isolation_level(self) -> IsolationLevel:
        """The isolation level of this connection, read from the database."""
        return await self._runner.run(STATEMENT, self._connection_for().get_isolation_level)

    @property
    def default_isolation_level(self) -> IsolationLevel | None:
        """The dialect's default isolation level for new connections."""
        return self._connection_for().default_isolation_level

    @property
    def closed(self) -> bool:
        """True once the connection is closed."""
        conn = self.sync_connection
        return conn is not None and conn.closed

    @property
    def invalidated(self) -> bool:
        """True if the underlying DBAPI connection was invalidated."""
        conn = self.sync_connection
        return conn is not None and conn.invalidated

    @property
    def dialect(self) -> Dialect:
        """The connection's dialect."""
        return self._connection_for().dialect

    @dialect.setter
    def dialect(self, attr: Dialect) -> None:
        self._connection_for().dialect = attr

    @property
    def info(self) -> dict[Any, Any]:
        """The ``info`` dictionary of the underlying pooled DBAPI connection."""
        return self._connection_for().info

    @property
    def connection(self) -> NoReturn:
        """Not available: use ``await conn.get_raw_connection()``."""
        raise sa_exc.InvalidRequestError(
            "AsyncConnection.connection accessor is not implemented as the "
            "attribute may need to reconnect on an invalidated connection. "
            "Use the get_raw_connection() method."
        )

    # -- statements ------------------------------------------------------------

    @overload
    async def execute(
        self,
        statement: TypedReturnsRows[Unpack[_Ts]],
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Unpack[_Ts]]: ...

    @overload
    async def execute(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Unpack[TupleAny]]: ...

    async def execute(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Unpack[TupleAny]]:
        """Execute a statement and return a buffered :class:`CursorResult`
        (every row fetched on the worker)."""
        return await self._runner.run(
            STATEMENT,
            _execute_buffered,
            self._connection_for(),
            statement,
            parameters,
            execution_options,
        )

    async def exec_driver_sql(
        self,
        statement: str,
        parameters: _DBAPIAnyExecuteParams | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Unpack[TupleAny]]:
        """Execute a string of SQL directly on the driver; rows are buffered."""
        return await self._runner.run(
            STATEMENT,
            _exec_driver_sql_buffered,
            self._connection_for(),
            statement,
            parameters,
            execution_options,
        )

    @overload
    async def scalar(
        self,
        statement: TypedReturnsRows[_T],
        parameters: _CoreSingleExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _T | None: ...

    @overload
    async def scalar(
        self,
        statement: Executable,
        parameters: _CoreSingleExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> Any: ...

    async def scalar(
        self,
        statement: Executable,
        parameters: _CoreSingleExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> Any:
        """Execute and return the first column of the first row."""
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalar()

    @overload
    async def scalars(
        self,
        statement: TypedReturnsRows[_T],
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> ScalarResult[_T]: ...

    @overload
    async def scalars(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> ScalarResult[Any]: ...

    async def scalars(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> ScalarResult[Any]:
        """Execute and return a :class:`ScalarResult` of the first column."""
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalars()

    @overload
    def stream(
        self,
        statement: TypedReturnsRows[Unpack[_Ts]],
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _ResultContext[AsyncResult[Unpack[_Ts]]]: ...

    @overload
    def stream(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _ResultContext[AsyncResult[Unpack[TupleAny]]]: ...

    def stream(
        self,
        statement: Executable,
        parameters: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _ResultContext[AsyncResult[Unpack[TupleAny]]]:
        """Execute with a server-side cursor (PostgreSQL) or a lazily fetched
        cursor (SQLite) and return an :class:`AsyncResult` that fetches rows
        in chunks, one thread hop per chunk.  Await it or use ``async with``."""
        return _ResultContext(self._stream(statement, parameters, execution_options))

    async def _stream(
        self, statement: Executable, parameters: Any, execution_options: Any
    ) -> AsyncResult[Unpack[TupleAny]]:
        dialect = self.sync_engine.dialect
        if dialect.is_async:
            _await_required(dialect)
        # SQLite's cursors step through the rows as they are fetched: a stream either way
        if not (dialect.supports_server_side_cursors or dialect.name == "sqlite"):
            raise sa_exc.InvalidRequestError(
                "Can't use `stream` or `stream_scalars` with the current dialect since it "
                "does not support server side cursors. Use execute() / scalars(), which "
                "fetch every row at once."
            )
        options = _STREAM.union(execution_options) if execution_options else _STREAM
        result = await self._runner.run(
            STREAM,
            self._connection_for().execute,
            statement,
            parameters,
            execution_options=options,
        )
        return AsyncResult(result, self._runner)

    @overload
    def stream_scalars(
        self,
        statement: TypedReturnsRows[_T],
        parameters: _CoreSingleExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _ResultContext[AsyncScalarResult[_T]]: ...

    @overload
    def stream_scalars(
        self,
        statement: Executable,
        parameters: _CoreSingleExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _ResultContext[AsyncScalarResult[Any]]: ...

    def stream_scalars(
        self,
        statement: Executable,
        parameters: _CoreSingleExecuteParams | None = None,
        *,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> _ResultContext[AsyncScalarResult[Any]]:
        """Like :meth:`stream`, returning an :class:`AsyncScalarResult`."""
        return _ResultContext(self._stream_scalars(statement, parameters, execution_options))

    async def _stream_scalars(
        self, statement: Executable, parameters: Any, execution_options: Any
    ) -> AsyncScalarResult[Any]:
        result = await self._stream(statement, parameters, execution_options)
        return result.scalars()

    async def run_sync(
        self, fn: Callable[Concatenate[Connection, _P], _T], *arg: _P.args, **kw: _P.kwargs
    ) -> _T:
        """Run ``fn(sync_connection, *arg, **kw)`` on this connection's worker
        thread, e.g. ``await conn.run_sync(metadata.create_all)``."""
        return await self._runner.run(USER, fn, self._connection_for(), *arg, **kw)


# --------------------------------------------------------------------------
# AsyncTransaction


class AsyncTransaction(StartableContext["AsyncTransaction"], ReversibleProxy):
    """An asyncio front for a sync :class:`~sqlalchemy.engine.Transaction`."""

    __slots__ = ("__weakref__", "connection", "nested", "sync_transaction")

    def __init__(self, connection: AsyncConnection, nested: bool = False):
        self.connection = connection
        self.nested = nested
        self.sync_transaction: Transaction | None = None

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Transaction) -> AsyncTransaction:
        connection = AsyncConnection._retrieve_proxy_for_target(target.connection)
        return cls._of(connection, target)

    @classmethod
    def _wrap(cls, connection: AsyncConnection, trans: Transaction) -> AsyncTransaction:
        """The one AsyncTransaction of ``trans`` (made on first use)."""
        return proxy_for(trans, lambda: cls._of(connection, trans))

    @classmethod
    def _of(cls, connection: AsyncConnection, trans: Transaction) -> AsyncTransaction:
        """A new front for an already started ``trans`` of ``connection``."""
        wrapped = cls(connection, isinstance(trans, NestedTransaction))
        wrapped.sync_transaction = trans
        return wrapped

    def __hash__(self) -> int:
        return id(self.sync_transaction) if self.sync_transaction is not None else id(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AsyncTransaction)
            and self.sync_transaction is not None
            and self.sync_transaction is other.sync_transaction
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def _sync(self) -> Transaction:
        trans = self.sync_transaction
        if trans is None:
            self._raise_for_not_started()
        return trans

    @property
    def _proxied(self) -> Transaction:
        return self._sync()

    @property
    def _rollback_kind(self) -> _worker.Kind:
        return SAVEPOINT_ROLLBACK if self.nested else ROLLBACK

    @property
    def is_valid(self) -> bool:
        """True while the transaction can still be used (as ``Transaction.is_valid``)."""
        return self._sync().is_valid

    @property
    def is_active(self) -> bool:
        """True while the transaction is in progress."""
        return self._sync().is_active

    async def close(self) -> None:
        """Close the transaction: roll back a root one, release a nested one."""
        await self.connection._runner.run(self._rollback_kind, self._sync().close)

    async def rollback(self) -> None:
        """Roll back this transaction."""
        await self.connection._runner.run(self._rollback_kind, self._sync().rollback)

    async def commit(self) -> None:
        """Commit this transaction."""
        await self.connection._runner.run(STATEMENT, self._sync().commit)

    async def start(self, is_ctxmanager: bool = False) -> AsyncTransaction:
        """Begin the transaction on the connection's worker."""
        if self.sync_transaction is not None:
            raise AsyncContextAlreadyStarted(
                "This AsyncTransaction was already started (awaited or entered with "
                "'async with'). Use it as it is: commit or roll it back, or begin another "
                "with conn.begin() / conn.begin_nested()."
            )
        conn = self.connection._connection_for()
        begin = conn.begin_nested if self.nested else conn.begin
        trans = await self.connection._runner.run(STATEMENT, _begin, begin, is_ctxmanager)
        self.sync_transaction = trans
        self._assign_proxied(trans)
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.connection._runner.exit_block(
            self.nested, self._sync().__exit__, type_, value, traceback
        )


def _begin(begin: Callable[[], Any], is_ctxmanager: bool) -> Any:
    """On the worker: begin, and as a context manager enter the sync transaction, so
    that SQL after it was ended inside the block is refused as in SQLAlchemy."""
    trans = begin()
    if is_ctxmanager:
        trans.__enter__()
    return trans


_sa_compat.refuse_inspection(
    AsyncConnection,
    "Inspection on an AsyncConnection is currently not supported. Use await "
    "conn.run_sync(fn) to pass a callable that calls inspect() on the sync connection.",
)
_sa_compat.refuse_inspection(
    AsyncEngine,
    "Inspection on an AsyncEngine is currently not supported. Get a connection, then use "
    "await conn.run_sync(fn) to pass a callable that calls inspect() on the sync connection.",
)


def _get_sync_engine_or_connection(async_engine: Any) -> Engine | Connection:
    if isinstance(async_engine, AsyncConnection):
        return async_engine._connection_for()
    if isinstance(async_engine, AsyncEngine):
        return async_engine.sync_engine
    if isinstance(async_engine, (Engine, Connection)):
        return async_engine
    raise sa_exc.ArgumentError(
        f"AsyncEngine, AsyncConnection or a sync Engine expected, got {async_engine!r}"
    )
