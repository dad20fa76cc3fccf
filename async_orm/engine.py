"""AsyncEngine, AsyncConnection and AsyncTransaction over sync drivers.

Mirrors ``sqlalchemy.ext.asyncio.engine``: the same classes, methods and
signatures.  ``create_async_engine`` takes *sync* URLs
(``postgresql+psycopg://``, ``sqlite://``, ``mysql+pymysql://``) and an
:class:`AsyncEngine` can wrap an :class:`~sqlalchemy.engine.Engine` an
application already has.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import weakref
from asyncio import _get_running_loop
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Concatenate, Generic, NoReturn, TypeVar, overload

from sqlalchemy import event, util
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect, Engine, ScalarResult, create_engine, make_url
from sqlalchemy.engine import create_pool_from_url as _sa_create_pool_from_url
from sqlalchemy.engine.cursor import CursorResult, FullyBufferedCursorFetchStrategy
from sqlalchemy.engine.url import URL
from sqlalchemy.pool import (
    AssertionPool,
    NullPool,
    Pool,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)
from typing_extensions import ParamSpec, TypeVarTuple, Unpack

from . import _guard, _worker
from .exc import (
    AsyncContextAlreadyStarted,
    AsyncContextNotStarted,
    AsyncDriverURLError,
    AsyncMethodRequired,
    RollbackRequiredAfterCancel,
)
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.base import NestedTransaction, RootTransaction, Transaction
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
    "async_engine_from_config",
    "create_async_engine",
    "create_async_pool_from_url",
]

DEFAULT_WORKER_TIMEOUT = 30.0

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


def _is_sqlite_memory(u: URL) -> bool:
    if u.get_backend_name() != "sqlite":
        return False
    db = u.database
    if db in (None, "", ":memory:"):
        return True
    return "mode=memory" in db or u.query.get("mode") == "memory"


def create_async_engine(url: str | URL, **kw: Any) -> AsyncEngine:
    """Create an :class:`AsyncEngine` from a sync database URL.

    Takes the arguments of :func:`sqlalchemy.create_engine`, plus:

    :param max_workers: how many sessions/connections of this engine may hold a
        worker thread at once.  Defaults to the pool's capacity
        (``pool_size + max_overflow``), or 32 for pools without a bound.
    :param worker_timeout: seconds a new session waits for a free worker slot
        before :class:`~async_orm.exc.WorkerSlotTimeout` (default 30).

    An async driver's URL (``postgresql+asyncpg://``) is refused with an error
    naming the sync URL to use.  In-memory SQLite (``sqlite://``) gets a
    :class:`~sqlalchemy.pool.StaticPool` so every worker thread sees the same
    database (and, sharing one connection, one session runs at a time).
    """
    if kw.get("server_side_cursors", False):
        raise AsyncMethodRequired(
            "Can't set server_side_cursors for async engine globally; "
            "use the connection.stream() method for an async "
            "streaming result set"
        )
    max_workers = kw.pop("max_workers", None)
    worker_timeout = kw.pop("worker_timeout", None)
    u = _check_sync_url(url)
    if _is_sqlite_memory(u) and "poolclass" not in kw and "pool" not in kw:
        kw["poolclass"] = StaticPool
        connect_args = dict(kw.get("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        kw["connect_args"] = connect_args
    sync_engine = create_engine(u, **kw)
    return AsyncEngine(sync_engine, max_workers=max_workers, worker_timeout=worker_timeout)


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
    :func:`sqlalchemy.create_pool_from_url`; async driver URLs are refused."""
    return _sa_create_pool_from_url(_check_sync_url(url), **kwargs)


# --------------------------------------------------------------------------
# engine instrumentation: the loop guard and interrupting a running statement

#: thread ident -> the DBAPI connections that thread has checked out of a pool;
#: maintained by pool events (once per checkout, not per statement)
_checked_out: dict[int, list[Any]] = {}
_checked_out_lock = threading.Lock()
_get_ident = threading.get_ident
_INSTRUMENTED = "_async_orm_instrumented"
_GUARDED_DIALECT = "_async_orm_guarded"


def _guard_dialect(dialect: Dialect) -> None:
    """The loop guard for Core statements, on one engine's dialect.

    Every statement SQLAlchemy sends reaches the driver through ``do_execute``,
    ``do_executemany`` or ``do_execute_no_params`` of the engine's dialect (its own
    instance, shared only with ``execution_options()`` copies of that engine).
    Wrapping those three costs one C call per statement off the loop; a
    ``before_cursor_execute`` listener would do the same check but switch every
    execution of the engine to SQLAlchemy's slower with-events path.  The error is
    raised where a driver error would be, so SQLAlchemy cleans up as it does then.
    """
    if dialect.__dict__.get(_GUARDED_DIALECT):
        return
    for name in ("do_execute", "do_executemany", "do_execute_no_params"):
        setattr(dialect, name, _refusing_on_loop(getattr(dialect, name)))
    dialect.__dict__[_GUARDED_DIALECT] = True


def _refusing_on_loop(method: Callable[..., None]) -> Callable[..., None]:
    """``method(cursor, statement, ...)``, refused on a thread running an event loop."""

    def guarded(cursor: Any, statement: str, *rest: Any, **kw: Any) -> None:
        if _get_running_loop() is not None and _guard.loop_io_refused():
            raise _guard.statement_on_loop(statement)
        method(cursor, statement, *rest, **kw)

    return guarded


#: id(pool record) -> (thread ident, DBAPI connection) while checked out; at checkin
#: an invalidated record no longer names its DBAPI connection, so it is kept here
_holders: dict[int, tuple[int, Any]] = {}


def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    ident = _get_ident()
    with _checked_out_lock:
        _holders[id(record)] = (ident, dbapi_connection)
        _checked_out.setdefault(ident, []).append(dbapi_connection)


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    with _checked_out_lock:
        holder = _holders.pop(id(record), None)
        if holder is None:
            return
        ident, held = holder
        conns = _checked_out.get(ident)
        if conns is not None:
            conns[:] = [c for c in conns if c is not held]
            if not conns:
                del _checked_out[ident]


def _reached(connection: Connection) -> None:
    """A guarded session began a transaction on ``connection`` (on its worker):
    instrument an engine seen for the first time, and note the connection it
    already holds."""
    engine = connection.engine
    if engine.__dict__.get(_INSTRUMENTED):
        return
    _instrument(engine)
    record = getattr(connection.connection, "_connection_record", None)
    if record is not None and id(record) not in _holders:
        _on_checkout(connection.connection.dbapi_connection, record, None)


def _instrument(sync_engine: Engine) -> None:
    """Install async_orm's engine and pool events once per engine (idempotent):
    the Core loop guard, and which thread holds which DBAPI connection (for
    interrupting a cancelled call)."""
    if sync_engine.__dict__.get(_INSTRUMENTED):
        return
    sync_engine.__dict__[_INSTRUMENTED] = True
    _guard_dialect(sync_engine.dialect)
    event.listen(sync_engine, "checkout", _on_checkout)
    event.listen(sync_engine, "checkin", _on_checkin)


_guard.on_engine_reached = _reached


def _interrupt_statement(thread_ident: int) -> None:
    """Interrupt the statement running on ``thread_ident``, at the driver.

    psycopg: ``cancel_safe()`` (3.2+) or ``cancel()``; sqlite3: ``interrupt()``;
    PyMySQL: ``KILL QUERY <thread id>`` sent over a short-lived second connection,
    as the ``mysql`` client does on Ctrl-C.  Called on async_orm's canceller
    thread, never on the event loop.
    """
    with _checked_out_lock:
        conns = list(_checked_out.get(thread_ident, ()))
    for dbapi_conn in conns:  # interrupting an idle connection is a no-op
        _interrupt_connection(dbapi_conn)


def _interrupt_connection(dbapi_conn: Any) -> None:
    cancel_safe = getattr(dbapi_conn, "cancel_safe", None)
    if cancel_safe is not None:
        cancel_safe(timeout=5.0)
        return
    for name in ("cancel", "interrupt"):
        method = getattr(dbapi_conn, name, None)
        if method is not None:
            method()
            return
    if callable(getattr(dbapi_conn, "thread_id", None)) and hasattr(dbapi_conn, "host"):
        _kill_mysql_query(dbapi_conn)


def _kill_mysql_query(dbapi_conn: Any) -> None:
    killer = type(dbapi_conn)(
        host=dbapi_conn.host,
        port=dbapi_conn.port,
        user=dbapi_conn.user,
        password=dbapi_conn.password,
        unix_socket=getattr(dbapi_conn, "unix_socket", None),
        ssl=dbapi_conn.ctx
        if isinstance(getattr(dbapi_conn, "_sock", None), ssl.SSLSocket)
        else None,
        connect_timeout=5,
    )
    try:
        with killer.cursor() as cursor:
            cursor.execute(f"KILL QUERY {int(dbapi_conn.thread_id())}")
    finally:
        killer.close()


# --------------------------------------------------------------------------
# worker slots per engine


_limiters: weakref.WeakKeyDictionary[Pool, _worker.Limiter] = weakref.WeakKeyDictionary()
_limiters_lock = threading.Lock()


def _pool_capacity(pool: Pool) -> int:
    if isinstance(pool, QueuePool):
        size = pool.size()
        overflow = pool._max_overflow
        if size <= 0 or overflow < 0:
            return _worker.default_capacity()
        return max(1, size + overflow)
    if isinstance(pool, (StaticPool, AssertionPool)):
        return 1
    if isinstance(pool, SingletonThreadPool):
        return max(1, pool.size)
    if isinstance(pool, NullPool):
        return _worker.default_capacity()
    return _worker.default_capacity()


def _limiter_for(
    sync_engine: Engine, max_workers: int | None = None, timeout: float | None = None
) -> _worker.Limiter:
    """The slot limiter of ``sync_engine``'s pool (one per pool, shared by the
    engine's ``execution_options()`` copies)."""
    pool = sync_engine.pool
    with _limiters_lock:
        limiter = _limiters.get(pool)
        if limiter is None:
            capacity = max_workers if max_workers is not None else _pool_capacity(pool)
            describe = (
                f"engine {sync_engine.url.render_as_string(hide_password=True)!r} "
                f"({type(pool).__name__}, capacity {capacity})"
            )
            limiter = _worker.Limiter(
                capacity, timeout if timeout is not None else DEFAULT_WORKER_TIMEOUT, describe
            )
            _limiters[pool] = limiter
        else:
            if max_workers is not None and max_workers != limiter.capacity:
                raise sa_exc.ArgumentError(
                    f"This engine's pool already has {limiter.capacity} worker slots; "
                    "max_workers can only be given when the engine is first wrapped."
                )
            if timeout is not None:
                limiter.timeout = timeout
    return limiter


def _new_runner(sync_engine: Engine | None, owner_name: str) -> _worker.Runner:
    """A runner for a session or connection bound to ``sync_engine``."""
    if sync_engine is None:
        limiter = _unbound_limiter
    else:
        _instrument(sync_engine)
        limiter = _limiter_for(sync_engine)
    return _worker.Runner(limiter, _interrupt_statement, owner_name)


_unbound_limiter = _worker.Limiter(
    _worker.default_capacity(), DEFAULT_WORKER_TIMEOUT, "sessions without a bind"
)


async def _run_detached(fn: Callable[..., _T], *args: Any) -> _T:
    """Run engine-level work (dispose, raw_connection) on a pooled worker that
    takes no slot, so it works while every slot is busy."""
    runner = _worker.Runner(_maintenance_limiter, None, "AsyncEngine")
    try:
        return await runner.run_shielded(fn, *args)
    finally:
        runner.release()


_maintenance_limiter = _worker.Limiter(1 << 20, DEFAULT_WORKER_TIMEOUT, "engine maintenance")


# --------------------------------------------------------------------------
# StartableContext, AsyncConnectable


class AsyncConnectable:
    """Base of :class:`AsyncEngine` and :class:`AsyncConnection`: something a
    session can be bound to."""

    __slots__ = ()

    sync_engine: Engine


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
        worker_timeout: float | None = None,
    ) -> None:
        if not isinstance(sync_engine, Engine):
            raise sa_exc.ArgumentError(
                f"AsyncEngine() takes a sync sqlalchemy Engine, not {type(sync_engine).__name__}"
            )
        if sync_engine.dialect.is_async:
            _check_sync_url(sync_engine.url)
        self.sync_engine = sync_engine
        _instrument(sync_engine)
        self._limiter = _limiter_for(sync_engine, max_workers, worker_timeout)

    # -- proxy comparisons ------------------------------------------------------

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
        old_pool = self.sync_engine.pool
        await _run_detached(self._dispose_sync, close)
        new_pool = self.sync_engine.pool
        with _limiters_lock:
            if new_pool is not old_pool and old_pool in _limiters:
                _limiters[new_pool] = _limiters[old_pool]

    def _dispose_sync(self, close: bool) -> None:
        self.sync_engine.dispose(close=close)

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
    if result.context._is_server_side:
        result.close()
        raise AsyncMethodRequired(
            f"Can't use the {owner}.{method}() method with a server-side cursor. Use "
            f"the {owner}.stream() method for an async streaming result set."
        )
    cursor = result.cursor
    if cursor is not None and result.returns_rows:
        strategy = result.cursor_strategy
        rows = strategy.fetchall(result, cursor)  # also soft-closes the DBAPI cursor
        result.cursor_strategy = FullyBufferedCursorFetchStrategy(
            None,
            alternate_description=strategy.alternate_cursor_description,
            initial_buffer=rows,
        )
    return result


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
        self._runner = _new_runner(self.sync_engine, "AsyncConnection")
        self._owns_runner = True

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

    def _call(self, fn: Callable[..., _T], /, *args: Any) -> Coroutine[Any, Any, _T]:
        """Run a statement-making call on the worker, unless a cancelled call left this
        connection's transaction in an unknown state (then a rollback comes first)."""
        runner = self._runner
        if runner.interrupted:
            raise _connection_rollback_required()
        return runner.run(fn, *args)

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
            conn = await self._runner.run(self.sync_engine.connect)
        except BaseException:
            if self._owns_runner:
                self._runner.release()  # nothing to close: give the slot back now
            raise
        self.sync_connection = conn
        self._runner.finalizer = conn.close  # closes it on its worker if never closed
        return self

    async def close(self) -> None:
        """Close the connection (returning it to the pool) and release its worker.
        A cancellation cannot interrupt closing."""
        conn = self.sync_connection
        try:
            if conn is not None and not conn.closed:
                await self._runner.run_shielded(conn.close)
        finally:
            if self._owns_runner:
                self._runner.interrupted = False
                self._runner.release()

    async def aclose(self) -> None:
        """Same as :meth:`close`, for :func:`contextlib.aclosing`."""
        await self.close()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.close()

    async def invalidate(self, exception: BaseException | None = None) -> None:
        """Invalidate the underlying DBAPI connection; see :meth:`Connection.invalidate`."""
        await self._runner.run(self._connection_for().invalidate, exception)

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
        await self._call(self._connection_for().commit)

    async def rollback(self) -> None:
        """Roll back the transaction in progress."""
        await self._runner.run(self._connection_for().rollback)
        self._runner.interrupted = False

    def in_transaction(self) -> bool:
        """True if a transaction is in progress."""
        return self._connection_for().in_transaction()

    def in_nested_transaction(self) -> bool:
        """True if a SAVEPOINT is in progress."""
        return self._connection_for().in_nested_transaction()

    def get_transaction(self) -> AsyncTransaction | None:
        """The :class:`AsyncTransaction` in progress, if any."""
        trans = self._connection_for().get_transaction()
        return AsyncTransaction._wrap(self, trans, False) if trans is not None else None

    def get_nested_transaction(self) -> AsyncTransaction | None:
        """The innermost SAVEPOINT :class:`AsyncTransaction` in progress, if any."""
        trans = self._connection_for().get_nested_transaction()
        return AsyncTransaction._wrap(self, trans, True) if trans is not None else None

    # -- options and attributes ---------------------------------------------------

    async def execution_options(self, **opt: Any) -> AsyncConnection:
        """Set execution options on this connection (in place) and return it."""
        conn = self._connection_for()
        c2 = await self._runner.run(lambda: conn.execution_options(**opt))
        assert c2 is conn
        return self

    async def get_raw_connection(self) -> PoolProxiedConnection:
        """The pooled DBAPI connection this connection uses."""
        conn = self._connection_for()
        return await self._runner.run(getattr, conn, "connection")

    async def get_isolation_level(self) -> IsolationLevel:
        """The isolation level of this connection, read from the database."""
        return await self._runner.run(self._connection_for().get_isolation_level)

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
        conn = self._connection_for()
        return await self._call(self._execute_sync, conn, statement, parameters, execution_options)

    @staticmethod
    def _execute_sync(
        conn: Connection,
        statement: Executable,
        parameters: Any,
        execution_options: Any,
    ) -> CursorResult[Unpack[TupleAny]]:
        result = conn.execute(statement, parameters, execution_options=execution_options)
        return _buffer_result(result, "execute")

    async def exec_driver_sql(
        self,
        statement: str,
        parameters: _DBAPIAnyExecuteParams | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
    ) -> CursorResult[Unpack[TupleAny]]:
        """Execute a string of SQL directly on the driver; rows are buffered."""
        conn = self._connection_for()

        def call() -> CursorResult[Unpack[TupleAny]]:
            result = conn.exec_driver_sql(statement, parameters, execution_options)
            return _buffer_result(result, "exec_driver_sql")

        return await self._call(call)

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
        conn = self._connection_for()
        options = _STREAM.union(execution_options) if execution_options else _STREAM
        result = await self._call(
            lambda: conn.execute(statement, parameters, execution_options=options)
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
        conn = self._connection_for()
        return await self._call(self._runner._marked, lambda: fn(conn, *arg, **kw))


# --------------------------------------------------------------------------
# AsyncTransaction


class AsyncTransaction(StartableContext["AsyncTransaction"]):
    """An asyncio front for a sync :class:`~sqlalchemy.engine.Transaction`."""

    __slots__ = ("connection", "nested", "sync_transaction")

    def __init__(self, connection: AsyncConnection, nested: bool = False):
        self.connection = connection
        self.nested = nested
        self.sync_transaction: Transaction | None = None

    @classmethod
    def _wrap(
        cls, connection: AsyncConnection, trans: Transaction, nested: bool
    ) -> AsyncTransaction:
        wrapped = cls(connection, nested)
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
    def is_valid(self) -> bool:
        """True while the transaction can still be used (see :attr:`Transaction.is_valid`)."""
        return self._sync().is_valid

    @property
    def is_active(self) -> bool:
        """True while the transaction is in progress."""
        return self._sync().is_active

    async def close(self) -> None:
        """Close the transaction: roll back a root one, release a nested one."""
        await self.connection._runner.run_shielded(self._sync().close)
        _rolled_back(self.connection._runner, self.nested)

    async def rollback(self) -> None:
        """Roll back this transaction."""
        await self.connection._runner.run(self._sync().rollback)
        _rolled_back(self.connection._runner, self.nested)

    async def commit(self) -> None:
        """Commit this transaction."""
        await self.connection._call(self._sync().commit)

    async def start(self, is_ctxmanager: bool = False) -> AsyncTransaction:
        """Begin the transaction on the connection's worker."""
        if self.sync_transaction is not None:
            raise AsyncContextAlreadyStarted(
                "This AsyncTransaction was already started (awaited or entered with "
                "'async with'). Use it as it is: commit or roll it back, or begin another "
                "with conn.begin() / conn.begin_nested()."
            )
        conn = self.connection._connection_for()
        begin: Callable[[], RootTransaction | NestedTransaction] = (
            conn.begin_nested if self.nested else conn.begin
        )
        self.sync_transaction = await self.connection._runner.run(begin)
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await _exit_transaction(
            self.connection._runner,
            self._sync(),
            self.nested,
            type_,
            value,
            traceback,
            _connection_rollback_required,
        )


def _connection_rollback_required() -> RollbackRequiredAfterCancel:
    return RollbackRequiredAfterCancel(
        "A call of this AsyncConnection was cancelled while it was running, so its "
        "transaction is in an unknown state. Call 'await conn.rollback()' (or close the "
        "connection) before using it again."
    )


def _rolled_back(runner: _worker.Runner, nested: bool) -> None:
    """After a transaction's rollback: a root rollback ends whatever state a cancelled
    call left; rolling back to a savepoint does not (SQLite may already have rolled
    back the whole transaction)."""
    if not nested:
        runner.interrupted = False


async def _exit_transaction(
    runner: _worker.Runner,
    trans: Any,
    nested: bool,
    type_: Any,
    value: Any,
    traceback: Any,
    rollback_required: Callable[[], RollbackRequiredAfterCancel],
) -> None:
    """The exit of ``async with ...begin()`` (connection or session), shielded.

    A block that ends normally commits, unless a call cancelled while it ran left the
    transaction in an unknown state: then it is rolled back instead and
    :class:`RollbackRequiredAfterCancel` raised, so half a unit of work is never
    committed.  A root rollback clears that state; a savepoint's does not.
    """
    refused = None
    if type_ is None and runner.interrupted:
        refused = rollback_required()
        type_, value, traceback = type(refused), refused, None
    await runner.run_shielded(trans.__exit__, type_, value, traceback)
    if type_ is not None:  # the block's exit rolled back
        _rolled_back(runner, nested)
    if refused is not None:
        raise refused


def _get_sync_engine_or_connection(
    async_engine: AsyncEngine | AsyncConnection | Engine | Connection,
) -> Engine | Connection:
    if isinstance(async_engine, AsyncConnection):
        return async_engine._connection_for()
    if isinstance(async_engine, AsyncEngine):
        return async_engine.sync_engine
    if isinstance(async_engine, (Engine, Connection)):
        return async_engine
    raise sa_exc.ArgumentError(
        f"AsyncEngine, AsyncConnection or a sync Engine expected, got {async_engine!r}"
    )
