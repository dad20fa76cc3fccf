"""AsyncSession, AsyncSessionTransaction, async_sessionmaker and AsyncAttrs.

Mirrors ``sqlalchemy.ext.asyncio.session``.  Every awaitable method runs the
sync :class:`~sqlalchemy.orm.Session` method of the same name on the session's
worker thread (see :doc:`threading`): one hop per awaited call, in
submission order.  Methods that touch no connection (``add``, ``expunge``,
``close`` of a session with no transaction, ...) run in place while the worker
is idle, and queue behind the calls in flight otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    NoReturn,
    TypeVar,
    overload,
)

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect, util
from sqlalchemy.engine import Connection, Engine, Result, ScalarResult
from sqlalchemy.orm import Session, SessionTransaction, object_session
from sqlalchemy.orm.state import InstanceState
from typing_extensions import ParamSpec, TypeVarTuple, Unpack

from . import _guard, _sa_compat, _worker
from ._worker import (
    END,
    END_QUIET,
    LOCAL,
    LOCAL_ADD,
    ROLLBACK,
    SAVEPOINT_ROLLBACK,
    STATEMENT,
    STREAM,
    USER,
)
from .base import ReversibleProxy, proxy_for, proxy_of
from .engine import (
    AsyncConnection,
    AsyncEngine,
    StartableContext,
    _async_engine,
    _begin,
    _buffer_result,
    _get_sync_engine_or_connection,
)
from .exc import AsyncBindNotFound, AsyncMethodRequired
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter, _CoreAnyExecuteParams
    from sqlalchemy.orm._typing import OrmExecuteOptionsParameter
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.orm.session import (
        _BindArguments,
        _EntityBindKey,
        _PKIdentityArgument,
        _SessionBindKey,
    )
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.elements import ClauseElement
    from sqlalchemy.sql.selectable import ForUpdateParameter, TypedReturnsRows

__all__ = [
    "AsyncAttrs",
    "AsyncSession",
    "AsyncSessionTransaction",
    "async_object_session",
    "async_session",
    "async_sessionmaker",
    "close_all_sessions",
]

_T = TypeVar("_T", bound=Any)
_O = TypeVar("_O", bound=object)
_P = ParamSpec("_P")
_Ts = TypeVarTuple("_Ts")
TupleAny = tuple[Any, ...]

_EXECUTE_OPTIONS = util.immutabledict({"prebuffer_rows": True})
_STREAM_OPTIONS = util.immutabledict({"stream_results": True})

#: SQLAlchemy 2.1 added these Session APIs; they are mirrored only where present.
_HAS_21_API = hasattr(Session, "delete_all")
#: get()/get_one() default: False on SQLAlchemy 2.0, None ("not given") on 2.1
_POPULATE_EXISTING_DEFAULT: bool | None = None if _HAS_21_API else False

_AsyncSessionBind = AsyncEngine | AsyncConnection | Engine | Connection


def _merge_options(options: Any, defaults: util.immutabledict[str, Any]) -> Any:
    return defaults.union(options) if options else defaults


def _ensure_sync_result(result: Result[Unpack[TupleAny]], method: str) -> Result[Unpack[TupleAny]]:
    """Runs on the worker: refuse server-side cursors in execute(), buffer Core
    cursor results so that reading them on the loop does no I/O."""
    if getattr(result, "_is_cursor", False):
        return _buffer_result(result, method, "AsyncSession")  # type: ignore[arg-type]
    raw = _sa_compat.raw_cursor_result(result)
    if raw is not None and _sa_compat.is_server_side(raw):
        raw.close()
        raise AsyncMethodRequired(
            f"Can't use the AsyncSession.{method}() method with a server-side cursor. "
            "Use the AsyncSession.stream() method for an async streaming result set."
        )
    return result


def _execute_buffered(sync: Session, statement: Any, params: Any, **kw: Any) -> Any:
    return _ensure_sync_result(sync.execute(statement, params, **kw), "execute")


def _close_or_invalidate(sync: Session) -> None:
    """Runs on the worker: close, and if closing fails (a ROLLBACK refused by a
    broken connection), invalidate the connections rather than leak them."""
    try:
        sync.close()
    except BaseException:
        try:
            sync.invalidate()
        except Exception:
            pass  # the original error says more; it is raised below
        raise


class AsyncSession(ReversibleProxy):
    """An asyncio front for a sync :class:`~sqlalchemy.orm.Session`.

    ``bind`` may be an :class:`AsyncEngine`, an :class:`AsyncConnection`, or a
    sync :class:`~sqlalchemy.engine.Engine` (which the session binds to through its
    one :class:`AsyncEngine`) or :class:`~sqlalchemy.engine.Connection` the
    application already has; other keywords go to ``sync_session_class``.
    The session takes a worker thread on its first awaited call and gives it
    back on :meth:`close`.  Use one per request or task; several tasks may share
    one, and their calls then run one at a time, in the order made.
    """

    _is_asyncio = True

    sync_session_class: type[Session] = Session
    """The sync :class:`~sqlalchemy.orm.Session` class (or subclass) to use."""

    sync_session: Session
    """The sync :class:`~sqlalchemy.orm.Session` this session runs, on its worker
    thread.  Use it inside :meth:`run_sync`; from async code, touching the
    database through it raises :class:`~async_orm.exc.EventLoopIOError`."""

    def __init__(
        self,
        bind: _AsyncSessionBind | None = None,
        *,
        binds: dict[_SessionBindKey, _AsyncSessionBind] | None = None,
        sync_session_class: type[Session] | None = None,
        **kw: Any,
    ):
        self._bind: _AsyncSessionBind | None = None
        self._binds: dict[_SessionBindKey, _AsyncSessionBind] | None = None
        sync_bind: Engine | Connection | None = None
        sync_binds: dict[_SessionBindKey, Engine | Connection] | None = None
        runner: _worker.Runner | None = None
        if bind is not None:
            if isinstance(bind, Engine):  # a sync engine: its one AsyncEngine
                bind = _async_engine(bind)
            self._bind = bind
            sync_bind = _get_sync_engine_or_connection(bind)
            if isinstance(bind, AsyncConnection):
                runner = bind._runner  # the connection's thread is the session's thread
        if binds is not None:
            binds = _async_binds(binds)
            self._binds = binds
            sync_binds = {key: _get_sync_engine_or_connection(b) for key, b in binds.items()}
        if sync_session_class is not None:
            self.sync_session_class = sync_session_class

        sync = self.sync_session = self.sync_session_class(bind=sync_bind, binds=sync_binds, **kw)
        if not isinstance(sync, Session):
            raise sa_exc.ArgumentError(
                f"sync_session_class must be a Session subclass or a callable returning a "
                f"Session (such as a sessionmaker), not {self.sync_session_class!r}, which "
                f"returned {type(sync).__name__}."
            )
        _guard.guard_session(sync)
        if sync_binds or type(sync).get_bind is not Session.get_bind:
            # engines it may reach that it was not given: instrumented on first use
            _worker.watch_binds(sync)
        self._assign_proxied(sync)  # one async front per sync session

        if runner is None:
            if not sync_binds:  # the common case: one engine, or none
                engine_list = [sync_bind.engine] if sync_bind is not None else []
            else:
                engines = {
                    id(b.engine): b.engine
                    for b in (sync_bind, *sync_binds.values())
                    if b is not None
                }
                engine_list = list(engines.values())
            runner = _worker.new_runner(engine_list, "AsyncSession")
            runner.finalizer = sync.close
            self._owns_runner = True
        else:
            self._owns_runner = False
        self._runner = runner

    # -- the hop -----------------------------------------------------------------

    def _async_connection(self, sync_conn: Connection) -> AsyncConnection:
        """The one AsyncConnection of one of this session's sync connections (the
        AsyncConnection the session was bound to, for that one)."""
        return proxy_for(
            sync_conn,
            lambda: AsyncConnection._for_session(
                _async_engine(sync_conn.engine), sync_conn, self._runner
            ),
        )

    def _end_kind(self, quiet_when_idle: bool = False) -> _worker.Kind:
        """How this session's close/reset/invalidate runs: as the end of its worker,
        or, borrowing an AsyncConnection's worker, as a recovery call on it."""
        if not self._owns_runner:
            return ROLLBACK
        if quiet_when_idle and not self.sync_session.in_transaction():
            return END_QUIET  # touches no connection and fires no listener
        return END

    @classmethod
    def _no_async_engine_events(cls) -> NoReturn:
        # SQLAlchemy's event registry calls this for a target that has it
        raise NotImplementedError(
            "asynchronous events are not implemented at this time.  Apply "
            "synchronous listeners to the AsyncSession.sync_session (they run on the "
            "session's worker thread)."
        )

    # -- proxy comparisons ------------------------------------------------------

    @property
    def _proxied(self) -> Session:
        return self.sync_session

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {id(self):#x}>"

    # -- context management ---------------------------------------------------------

    async def __aenter__(self: _AS) -> _AS:
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.close()

    def _maker_context_manager(self: _AS) -> _AsyncSessionContextManager[_AS]:
        return _AsyncSessionContextManager(self)

    # -- statements -----------------------------------------------------------------

    @overload
    async def execute(
        self,
        statement: TypedReturnsRows[Unpack[_Ts]],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Result[Unpack[_Ts]]: ...

    @overload
    async def execute(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Result[Unpack[TupleAny]]: ...

    async def execute(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Result[Unpack[TupleAny]]:
        """Execute a statement and return a buffered :class:`~sqlalchemy.engine.Result`
        (all rows fetched on the worker, in one hop)."""
        return await self._runner.run(
            STATEMENT,
            _execute_buffered,
            self.sync_session,
            statement,
            params,
            execution_options=_merge_options(execution_options, _EXECUTE_OPTIONS),
            bind_arguments=bind_arguments,
            **kw,
        )

    @overload
    async def scalar(
        self,
        statement: TypedReturnsRows[_T],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> _T | None: ...

    @overload
    async def scalar(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Any: ...

    async def scalar(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Any:
        """Execute and return the first column of the first row."""
        options = _merge_options(execution_options, _EXECUTE_OPTIONS)
        return await self._runner.run(
            STATEMENT,
            self.sync_session.scalar,
            statement,
            params,
            execution_options=options,
            bind_arguments=bind_arguments,
            **kw,
        )

    @overload
    async def scalars(
        self,
        statement: TypedReturnsRows[_T],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> ScalarResult[_T]: ...

    @overload
    async def scalars(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> ScalarResult[Any]: ...

    async def scalars(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> ScalarResult[Any]:
        """Execute and return a :class:`~sqlalchemy.engine.ScalarResult` of the
        first column (ORM entities for ``select(User)``)."""
        result = await self.execute(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )
        return result.scalars()

    @overload
    async def stream(
        self,
        statement: TypedReturnsRows[Unpack[_Ts]],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncResult[Unpack[_Ts]]: ...

    @overload
    async def stream(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncResult[Unpack[TupleAny]]: ...

    async def stream(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncResult[Unpack[TupleAny]]:
        """Execute with a streaming cursor and return an :class:`AsyncResult`
        that fetches rows in chunks, one hop per chunk."""
        options = _merge_options(execution_options, _STREAM_OPTIONS)
        result = await self._runner.run(
            STREAM,
            self.sync_session.execute,
            statement,
            params,
            execution_options=options,
            bind_arguments=bind_arguments,
            **kw,
        )
        return AsyncResult(result, self._runner)

    @overload
    async def stream_scalars(
        self,
        statement: TypedReturnsRows[_T],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncScalarResult[_T]: ...

    @overload
    async def stream_scalars(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncScalarResult[Any]: ...

    async def stream_scalars(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncScalarResult[Any]:
        """Like :meth:`stream`, returning an :class:`AsyncScalarResult`."""
        result = await self.stream(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )
        return result.scalars()

    # -- identity -------------------------------------------------------------------

    async def get(
        self,
        entity: _EntityBindKey[_O],
        ident: _PKIdentityArgument,
        *,
        options: Sequence[ORMOption] | None = None,
        populate_existing: bool | None = _POPULATE_EXISTING_DEFAULT,
        with_for_update: ForUpdateParameter = None,
        identity_token: Any | None = None,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
    ) -> _O | None:
        """Return the instance with this primary key, or ``None``; see
        :meth:`Session.get`.  No SQL if it is already in the identity map."""
        return await self._runner.run(
            STATEMENT,
            self.sync_session.get,
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=execution_options,
        )

    async def get_one(
        self,
        entity: _EntityBindKey[_O],
        ident: _PKIdentityArgument,
        *,
        options: Sequence[ORMOption] | None = None,
        populate_existing: bool | None = _POPULATE_EXISTING_DEFAULT,
        with_for_update: ForUpdateParameter = None,
        identity_token: Any | None = None,
        execution_options: OrmExecuteOptionsParameter = util.EMPTY_DICT,
    ) -> _O:
        """Like :meth:`get`, raising :class:`~sqlalchemy.exc.NoResultFound`
        when there is no such row."""
        return await self._runner.run(
            STATEMENT,
            self.sync_session.get_one,
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=execution_options,
        )

    async def refresh(
        self,
        instance: object,
        attribute_names: Iterable[str] | None = None,
        with_for_update: ForUpdateParameter = None,
    ) -> None:
        """Reload the instance's attributes from the database (all, or
        ``attribute_names``), optionally ``SELECT ... FOR UPDATE``."""
        await self._runner.run(
            STATEMENT,
            self.sync_session.refresh,
            instance,
            attribute_names=attribute_names,
            with_for_update=with_for_update,
        )

    async def merge(
        self,
        instance: _O,
        *,
        load: bool = True,
        options: Sequence[ORMOption] | None = None,
    ) -> _O:
        """Copy the state of ``instance`` onto the persistent instance with the
        same identity (loading it if needed) and return that one."""
        return await self._runner.run(
            STATEMENT, self.sync_session.merge, instance, load=load, options=options
        )

    async def delete(self, instance: object) -> None:
        """Mark an instance deleted (cascades may load related rows, so this hops)."""
        await self._runner.run(STATEMENT, self.sync_session.delete, instance)

    if _HAS_21_API:

        async def merge_all(
            self,
            instances: Iterable[_O],
            *,
            load: bool = True,
            options: Sequence[ORMOption] | None = None,
        ) -> Sequence[_O]:
            """:meth:`merge` for each of ``instances``, in one hop."""
            return await self._runner.run(
                STATEMENT,
                self.sync_session.merge_all,
                instances,
                load=load,
                options=options,
            )

        async def delete_all(self, instances: Iterable[object]) -> None:
            """:meth:`delete` for each of ``instances``, in one hop."""
            await self._runner.run(STATEMENT, self.sync_session.delete_all, instances)

    # -- pending changes (no connection: run in place when the worker is idle) ------

    if _HAS_21_API:

        def add(self, instance: object, *, _warn: bool = True) -> None:
            """Place an instance in the session; see :meth:`Session.add`."""
            self._runner.run(LOCAL_ADD, self.sync_session.add, instance, _warn=_warn)

    else:

        def add(self, instance: object, _warn: bool = True) -> None:  # type: ignore[misc]
            """Place an instance in the session; see :meth:`Session.add`."""
            self._runner.run(LOCAL_ADD, self.sync_session.add, instance, _warn=_warn)

    def add_all(self, instances: Iterable[object]) -> None:
        """Add each of ``instances``; see :meth:`Session.add_all`."""
        self._runner.run(LOCAL_ADD, self.sync_session.add_all, list(instances))

    def expire(self, instance: object, attribute_names: Iterable[str] | None = None) -> None:
        """Mark attributes of an instance as expired (reloaded on next access,
        which from async code means ``awaitable_attrs`` or ``refresh``)."""
        self._runner.run(LOCAL, self.sync_session.expire, instance, attribute_names)

    def expire_all(self) -> None:
        """Expire every instance in the session."""
        self._runner.run(LOCAL, self.sync_session.expire_all)

    def expunge(self, instance: object) -> None:
        """Remove an instance from the session."""
        self._runner.run(LOCAL, self.sync_session.expunge, instance)

    def expunge_all(self) -> None:
        """Remove every instance from the session."""
        self._runner.run(LOCAL, self.sync_session.expunge_all)

    def is_modified(self, instance: object, include_collections: bool = True) -> bool:
        """True if the instance has changes to flush; see :meth:`Session.is_modified`."""
        return self.sync_session.is_modified(instance, include_collections=include_collections)

    async def flush(self, objects: Sequence[Any] | None = None) -> None:
        """Flush pending changes to the database."""
        await self._runner.run(STATEMENT, self.sync_session.flush, objects=objects)

    # -- transactions ---------------------------------------------------------------

    def in_transaction(self) -> bool:
        """True if a transaction (begun explicitly or by autobegin) is in progress."""
        return self.sync_session.in_transaction()

    def in_nested_transaction(self) -> bool:
        """True if a SAVEPOINT is in progress."""
        return self.sync_session.in_nested_transaction()

    def get_transaction(self) -> AsyncSessionTransaction | None:
        """The :class:`AsyncSessionTransaction` in progress, if any."""
        trans = self.sync_session.get_transaction()
        return AsyncSessionTransaction._wrap(self, trans) if trans is not None else None

    def get_nested_transaction(self) -> AsyncSessionTransaction | None:
        """The innermost SAVEPOINT transaction in progress, if any."""
        trans = self.sync_session.get_nested_transaction()
        return AsyncSessionTransaction._wrap(self, trans) if trans is not None else None

    def begin(self) -> AsyncSessionTransaction:
        """A transaction: ``async with session.begin():`` commits on success and
        rolls back on error; ``await session.begin()`` just begins it."""
        return AsyncSessionTransaction(self)

    def begin_nested(self) -> AsyncSessionTransaction:
        """A SAVEPOINT: ``async with session.begin_nested():``."""
        return AsyncSessionTransaction(self, nested=True)

    async def commit(self) -> None:
        """Flush and commit the current transaction."""
        await self._runner.run(STATEMENT, self.sync_session.commit)

    async def rollback(self) -> None:
        """Roll back the current transaction (also clears the state left by a
        cancelled call)."""
        await self._runner.run(ROLLBACK, self.sync_session.rollback)

    async def connection(
        self,
        bind_arguments: _BindArguments | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
        **kw: Any,
    ) -> AsyncConnection:
        """The :class:`AsyncConnection` of this session's transaction; it runs on
        the session's worker thread."""
        sync_conn = await self._runner.run(
            STATEMENT,
            self.sync_session.connection,
            bind_arguments=bind_arguments,
            execution_options=execution_options,
            **kw,
        )
        return self._async_connection(sync_conn)

    async def run_sync(
        self,
        fn: Callable[Concatenate[Session, _P], _T],
        *arg: _P.args,
        **kw: _P.kwargs,
    ) -> _T:
        """Run ``fn(sync_session, *arg, **kw)`` on this session's worker thread
        and return its result; the way to run existing sync code (lazy loads
        included) from async code."""
        return await self._runner.run(USER, fn, self.sync_session, *arg, **kw)

    # -- closing ----------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session: release its connection and transaction, expunge
        every object, and give its worker thread back.  A cancellation cannot
        interrupt closing.  The session can be used again afterwards."""
        await self._runner.run(
            self._end_kind(quiet_when_idle=True), _close_or_invalidate, self.sync_session
        )

    async def aclose(self) -> None:
        """Same as :meth:`close`, for :func:`contextlib.aclosing`."""
        await self.close()

    async def reset(self) -> None:
        """Close, and reset the session to its initial state; see :meth:`Session.reset`."""
        await self._runner.run(self._end_kind(), self.sync_session.reset)

    async def invalidate(self) -> None:
        """Close, invalidating the connections instead of returning them to the pool."""
        await self._runner.run(self._end_kind(), self.sync_session.invalidate)

    @classmethod
    async def close_all(cls) -> None:
        """Deprecated: close every AsyncSession in the process; use
        :func:`close_all_sessions`."""
        util.warn_deprecated(
            "The AsyncSession.close_all() method is deprecated and will be removed in a "
            "future release. Please refer to close_all_sessions().",
            "2.0",
        )
        await close_all_sessions()

    # -- binds --------------------------------------------------------------------------

    def get_bind(
        self,
        mapper: _EntityBindKey[_O] | None = None,
        clause: ClauseElement | None = None,
        bind: Engine | Connection | None = None,
        **kw: Any,
    ) -> Engine | Connection:
        """The sync engine or connection a statement would use; see
        :meth:`Session.get_bind` (override it on ``sync_session_class``)."""
        return self.sync_session.get_bind(mapper=mapper, clause=clause, bind=bind, **kw)

    if _HAS_21_API:

        def get_async_bind(
            self,
            mapper: _EntityBindKey[_O] | None = None,
            clause: ClauseElement | None = None,
            bind: _AsyncSessionBind | None = None,
            **kw: Any,
        ) -> _AsyncSessionBind:
            """Like :meth:`get_bind`, returning the :class:`AsyncEngine` or
            :class:`AsyncConnection`."""
            sync_bind = _get_sync_engine_or_connection(bind) if bind is not None else None
            resolved = self.get_bind(mapper=mapper, clause=clause, bind=sync_bind, **kw)
            if bind is not None and resolved is sync_bind:
                return bind
            return self._translate_for_bind(resolved)  # type: ignore[no-any-return]

        def bind_mapper(self, mapper: _EntityBindKey[_O], bind: _AsyncSessionBind) -> None:
            """Bind a mapper (class) to an engine or connection."""
            self.sync_session.bind_mapper(mapper, _get_sync_engine_or_connection(bind))
            self._binds = {**(self._binds or {}), mapper: bind}
            self._invalidate_translate_binds()

        def bind_table(self, table: Any, bind: _AsyncSessionBind) -> None:
            """Bind a table to an engine or connection."""
            self.sync_session.bind_table(table, _get_sync_engine_or_connection(bind))
            self._binds = {**(self._binds or {}), table: bind}
            self._invalidate_translate_binds()

        @property
        def execution_options(self) -> Any:
            """Default execution options of the sync session."""
            return self.sync_session.execution_options

        @execution_options.setter
        def execution_options(self, value: Any) -> None:
            self.sync_session.execution_options = value

    if _HAS_21_API:

        @property
        def binds(self) -> Mapping[_SessionBindKey, _AsyncSessionBind]:
            """A read-only mapping of the per-mapper / per-table binds of this
            session (from ``binds=``, :meth:`bind_mapper`, :meth:`bind_table`), as
            the async objects they were given as."""
            sync_binds = self.sync_session.binds
            return util.immutabledict(  # type: ignore[type-var]
                {key: self._translate_for_bind(bind) for key, bind in sync_binds.items()}
            )

    else:

        @property
        def binds(self) -> dict[_SessionBindKey, _AsyncSessionBind] | None:  # type: ignore[misc]
            """The ``binds`` this session was created with."""
            return self._binds

    @util.memoized_property
    def _translate_binds(self) -> dict[Any, Any]:
        """The binds this session was given (``bind=``, ``binds=``, :meth:`bind_mapper`,
        :meth:`bind_table`), sync to async and async to sync; rebuilt when they change."""
        translate: dict[Any, Any] = {}
        for async_bind in (self._bind, *(self._binds or {}).values()):
            if async_bind is not None:
                sync_bind = _get_sync_engine_or_connection(async_bind)
                translate[async_bind] = sync_bind
                translate[sync_bind] = async_bind
        return translate

    def _invalidate_translate_binds(self) -> None:
        self.__dict__.pop("_translate_binds", None)

    def _translate_for_bind(self, bind: Any) -> Any:
        """The async object (AsyncEngine, AsyncConnection) that a sync bind of this
        session came from, or the sync object an async bind stands for."""
        try:
            return self._translate_binds[bind]
        except KeyError:
            pass
        raise AsyncBindNotFound(
            f"Can't translate bind {bind!r}; it is not among the binds established for "
            f"this {type(self).__name__}. Establish binds on the {type(self).__name__} "
            "(bind=, binds=, bind_mapper(), bind_table()) rather than directly on its "
            "sync_session, so that the async object each one was derived from is known."
        )

    @property
    def bind(self) -> Any:
        """The :class:`AsyncEngine` or :class:`AsyncConnection` this session is bound
        to: the sync session's bind, translated back into the async object it was
        established from (SQLAlchemy 2.1; on 2.0, the bind it was created with)."""
        if not _HAS_21_API:
            return self._bind
        sync_bind = self.sync_session.bind
        return None if sync_bind is None else self._translate_for_bind(sync_bind)

    @bind.setter
    def bind(self, value: Any) -> None:
        self.sync_session.bind = (
            _get_sync_engine_or_connection(value) if value is not None else None
        )
        self._bind = value
        self._invalidate_translate_binds()

    # -- plain proxied attributes ----------------------------------------------------

    @property
    def dirty(self) -> Any:
        """Persistent instances with changes (see :attr:`Session.dirty`)."""
        return self.sync_session.dirty

    @property
    def deleted(self) -> Any:
        """Instances marked deleted (see :attr:`Session.deleted`)."""
        return self.sync_session.deleted

    @property
    def new(self) -> Any:
        """Pending instances (see :attr:`Session.new`)."""
        return self.sync_session.new

    @property
    def identity_map(self) -> Any:
        """The session's identity map."""
        return self.sync_session.identity_map

    @identity_map.setter
    def identity_map(self, attr: Any) -> None:
        self.sync_session.identity_map = attr

    @property
    def is_active(self) -> bool:
        """True unless the session is in a failed, rolled-back-only state."""
        return self.sync_session.is_active

    @property
    def autoflush(self) -> bool:
        """Whether queries flush pending changes first."""
        return self.sync_session.autoflush

    @autoflush.setter
    def autoflush(self, attr: bool) -> None:
        self.sync_session.autoflush = attr

    @property
    def no_autoflush(self) -> Any:
        """A context manager that disables autoflush inside it."""
        return self.sync_session.no_autoflush

    @property
    def info(self) -> Any:
        """A user dictionary attached to the sync session."""
        return self.sync_session.info

    @classmethod
    def object_session(cls, instance: object) -> Session | None:
        """The sync :class:`Session` an instance belongs to."""
        return Session.object_session(instance)

    @classmethod
    def identity_key(
        cls,
        class_: type[Any] | None = None,
        ident: Any | tuple[Any, ...] = None,
        *,
        instance: Any | None = None,
        row: Any | None = None,
        identity_token: Any | None = None,
    ) -> Any:
        """An identity key; see :meth:`Session.identity_key`."""
        return Session.identity_key(
            class_, ident, instance=instance, row=row, identity_token=identity_token
        )

    def __iter__(self) -> Iterator[object]:
        return iter(self.sync_session)

    def __contains__(self, instance: object) -> bool:
        return instance in self.sync_session


_AS = TypeVar("_AS", bound=AsyncSession)


class _AsyncSessionContextManager(Generic[_AS]):
    __slots__ = ("async_session", "trans")

    def __init__(self, async_session: _AS):
        self.async_session = async_session

    async def __aenter__(self) -> _AS:
        self.trans = self.async_session.begin()
        try:
            await self.trans.__aenter__()
        except BaseException:
            # __aexit__ will not run: the session this block made must still give back
            # the worker thread and slot that its first call took (closing is shielded)
            await self.async_session.close()
            raise
        return self.async_session

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        try:
            await self.trans.__aexit__(type_, value, traceback)
        finally:
            await self.async_session.__aexit__(type_, value, traceback)


class AsyncSessionTransaction(StartableContext["AsyncSessionTransaction"], ReversibleProxy):
    """A transaction of an :class:`AsyncSession`; see :meth:`AsyncSession.begin`."""

    __slots__ = ("__weakref__", "nested", "session", "sync_transaction")

    def __init__(self, session: AsyncSession, nested: bool = False):
        self.session = session
        self.nested = nested
        self.sync_transaction: SessionTransaction | None = None

    @classmethod
    def _wrap(cls, session: AsyncSession, trans: SessionTransaction) -> AsyncSessionTransaction:
        """The one AsyncSessionTransaction of ``trans`` (made on first use)."""

        def make() -> AsyncSessionTransaction:
            wrapped = cls(session, trans.nested)
            wrapped.sync_transaction = trans
            return wrapped

        return proxy_for(trans, make)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AsyncSessionTransaction)
            and self.sync_transaction is not None
            and self.sync_transaction is other.sync_transaction
        )

    def __hash__(self) -> int:
        return id(self.sync_transaction) if self.sync_transaction is not None else id(self)

    def _sync(self) -> SessionTransaction:
        trans = self.sync_transaction
        if trans is None:
            self._raise_for_not_started()
        return trans

    @property
    def is_active(self) -> bool:
        """True while this transaction is in progress."""
        trans = self.sync_transaction
        return trans is not None and trans.is_active

    async def rollback(self) -> None:
        """Roll back this transaction.  Rolling back the root transaction clears the
        state a cancelled call left; rolling back to a savepoint does not (SQLite may
        already have rolled back the whole transaction)."""
        kind = SAVEPOINT_ROLLBACK if self.nested else ROLLBACK
        await self.session._runner.run(kind, self._sync().rollback)

    async def commit(self) -> None:
        """Commit this transaction."""
        await self.session._runner.run(STATEMENT, self._sync().commit)

    async def start(self, is_ctxmanager: bool = False) -> AsyncSessionTransaction:
        """Begin the transaction on the session's worker."""
        sync = self.session.sync_session
        begin = sync.begin_nested if self.nested else sync.begin
        trans = await self.session._runner.run(STATEMENT, _begin, begin, is_ctxmanager)
        self.sync_transaction = trans
        self._assign_proxied(trans)
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.session._runner.exit_block(
            self.nested, self._sync().__exit__, type_, value, traceback
        )

    if _HAS_21_API:

        @property
        def connections(self) -> frozenset[AsyncConnection]:
            """The :class:`AsyncConnection` objects this transaction holds."""
            session = self.session
            return frozenset(session._async_connection(conn) for conn in self._sync().connections)

        def bound_connection(
            self,
            bindkey: _EntityBindKey[Any] | None = None,
            *,
            bind: _AsyncSessionBind | None = None,
            **kw: Any,
        ) -> AsyncConnection:
            """The :class:`AsyncConnection` this transaction holds for a bind."""
            sync_conn = self._sync().bound_connection(
                bindkey,
                bind=_get_sync_engine_or_connection(bind) if bind is not None else None,
                **kw,
            )
            return self.session._async_connection(sync_conn)


class async_sessionmaker(Generic[_AS]):
    """A factory of :class:`AsyncSession` objects with a fixed configuration.

    ``bind`` may be an :class:`AsyncEngine` or a sync
    :class:`~sqlalchemy.engine.Engine`, which the factory wraps (as it does the sync
    engines of ``binds``), once, in its :class:`AsyncEngine`::

        Session = async_sessionmaker(engine, expire_on_commit=False)
        async with Session() as session: ...
        async with Session.begin() as session: ...  # commits at the end
    """

    class_: type[_AS]

    @overload
    def __init__(
        self,
        bind: _AsyncSessionBind | None = ...,
        *,
        class_: type[_AS],
        autoflush: bool = ...,
        expire_on_commit: bool = ...,
        info: dict[Any, Any] | None = ...,
        **kw: Any,
    ): ...

    @overload
    def __init__(
        self: async_sessionmaker[AsyncSession],
        bind: _AsyncSessionBind | None = ...,
        *,
        autoflush: bool = ...,
        expire_on_commit: bool = ...,
        info: dict[Any, Any] | None = ...,
        **kw: Any,
    ): ...

    def __init__(
        self,
        bind: _AsyncSessionBind | None = None,
        *,
        class_: type[_AS] = AsyncSession,  # type: ignore[assignment]
        autoflush: bool = True,
        expire_on_commit: bool = True,
        info: dict[Any, Any] | None = None,
        **kw: Any,
    ):
        kw["bind"] = bind
        kw["autoflush"] = autoflush
        kw["expire_on_commit"] = expire_on_commit
        if info is not None:
            kw["info"] = info
        self.kw = _wrap_sync_engines(kw)
        self.class_ = class_

    def begin(self) -> _AsyncSessionContextManager[_AS]:
        """``async with maker.begin() as session:`` a new session in a
        transaction, committed (or rolled back) and closed at the end."""
        return self()._maker_context_manager()

    def __call__(self, **local_kw: Any) -> _AS:
        """A new session; ``local_kw`` override the factory's arguments."""
        for k, v in self.kw.items():
            if k == "info" and "info" in local_kw:
                d = v.copy()
                d.update(local_kw["info"])
                local_kw["info"] = d
            else:
                local_kw.setdefault(k, v)
        return self.class_(**local_kw)

    def configure(self, **new_kw: Any) -> None:
        """Change the factory's arguments for sessions made from now on."""
        self.kw.update(_wrap_sync_engines(new_kw))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kw.items())
        return f"{self.__class__.__name__}(class_={self.class_.__name__!r}, {args})"


def _async_binds(binds: dict[Any, Any]) -> dict[Any, Any]:
    """``binds`` with each sync Engine replaced by its one AsyncEngine (``binds``
    itself when it has none)."""
    if not any(isinstance(b, Engine) for b in binds.values()):
        return binds
    return {key: _async_engine(b) if isinstance(b, Engine) else b for key, b in binds.items()}


def _wrap_sync_engines(kw: dict[str, Any]) -> dict[str, Any]:
    """``bind`` / ``binds`` of a session factory with each sync Engine replaced by its
    AsyncEngine, made once (and kept alive) by the factory."""
    if isinstance(kw.get("bind"), Engine):
        kw["bind"] = _async_engine(kw["bind"])
    if kw.get("binds"):
        kw["binds"] = _async_binds(kw["binds"])
    return kw


# --------------------------------------------------------------------------
# AsyncAttrs


class _AttrLoader:
    __slots__ = ("_instance",)

    def __init__(self, instance: Any):
        self._instance = instance

    def __getattr__(self, name: str) -> Any:
        return _load_attribute(self._instance, name)


def _load_attribute(instance: Any, name: str) -> Any:
    state: InstanceState[Any] = inspect(instance)
    session = async_session(state.session) if state.session is not None else None
    if session is None or name not in state.unloaded:
        return _ready(getattr, instance, name)
    return session._runner.run(STATEMENT, getattr, instance, name)


async def _ready(fn: Callable[..., _T], *args: Any) -> _T:
    """An awaitable computing ``fn(*args)`` in place (no hop)."""
    return fn(*args)


class AsyncAttrs:
    """Mixin for ORM classes: ``await obj.awaitable_attrs.name`` loads an
    attribute on the owning session's worker thread.

    ::

        class Base(AsyncAttrs, DeclarativeBase): ...

        addresses = await user.awaitable_attrs.addresses

    An attribute that is already loaded is returned without a thread hop.
    """

    __slots__ = ()

    @property
    def awaitable_attrs(self) -> Any:
        """An object whose attributes are awaitables loading this instance's
        attributes of the same name."""
        return _AttrLoader(self)


# --------------------------------------------------------------------------
# module functions


def async_object_session(instance: object) -> AsyncSession | None:
    """The :class:`AsyncSession` an ORM instance belongs to, or ``None``."""
    session = object_session(instance)
    return async_session(session) if session is not None else None


def async_session(session: Session) -> AsyncSession | None:
    """The :class:`AsyncSession` running this sync :class:`Session`, or ``None``."""
    found = proxy_of(session)
    return found if isinstance(found, AsyncSession) else None


_sa_compat.set_async_session_provider(async_session)


async def close_all_sessions() -> None:
    """Close every :class:`AsyncSession` of this process, each on its own worker."""
    fronts = [ref() for ref in list(ReversibleProxy._proxy_objects.values())]
    for session in fronts:
        if isinstance(session, AsyncSession):
            await session.close()
