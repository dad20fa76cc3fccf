"""async_scoped_session: one AsyncSession per scope (task, request, context).

Mirrors ``sqlalchemy.ext.asyncio.scoping``.  Every proxied method and attribute
is declared here, as SQLAlchemy's own ``async_scoped_session`` declares them,
with the signature and overloads of :class:`~async_orm.AsyncSession`, so that type
checkers and editors see each one (``await Session.comit()`` is an error, and
``await Session.get(User, 1)`` is ``User | None``).  Each is one line that
forwards to the current scope's session, ``self._proxied`` (the registry's
session for the scope, created on first use).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from sqlalchemy import exc as sa_exc
from sqlalchemy import util
from sqlalchemy.orm import Session
from sqlalchemy.util import ScopedRegistry, warn
from typing_extensions import TypeVarTuple, Unpack

from .session import _HAS_21_API, _POPULATE_EXISTING_DEFAULT, AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, Result, ScalarResult
    from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter, _CoreAnyExecuteParams
    from sqlalchemy.orm._typing import OrmExecuteOptionsParameter
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.orm.session import (
        _BindArguments,
        _EntityBindKey,
        _PKIdentityArgument,
    )
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.elements import ClauseElement
    from sqlalchemy.sql.selectable import ForUpdateParameter, TypedReturnsRows

    from .engine import AsyncConnection
    from .result import AsyncResult, AsyncScalarResult
    from .session import AsyncSessionTransaction, _AsyncSessionBind

__all__ = ["async_scoped_session"]

_AS = TypeVar("_AS", bound=AsyncSession)
_T = TypeVar("_T", bound=Any)
_O = TypeVar("_O", bound=object)
_Ts = TypeVarTuple("_Ts")
TupleAny = tuple[Any, ...]


class async_scoped_session(Generic[_AS]):
    """A registry of :class:`AsyncSession` objects, one per scope.

    ``scopefunc`` is required: it returns the key of the current scope, e.g.
    :func:`asyncio.current_task` (one session per task) or one of
    :mod:`async_orm.scopes`.  Calling the object returns the scope's session;
    the session methods can be called on the object directly.  Call
    ``await scoped.remove()`` at the end of each scope.
    """

    session_factory: async_sessionmaker[_AS]
    registry: ScopedRegistry[_AS]

    def __init__(self, session_factory: async_sessionmaker[_AS], scopefunc: Callable[[], Any]):
        self.session_factory = session_factory
        self.registry = ScopedRegistry(session_factory, scopefunc)

    @property
    def _proxied(self) -> _AS:
        return self.registry()

    def __call__(self, **kw: Any) -> _AS:
        """The current scope's session, created (with ``kw``) if there is none."""
        if kw:
            if self.registry.has():
                raise sa_exc.InvalidRequestError(
                    "Scoped session is already present; no new arguments may be "
                    "specified. Call remove() to end the current scope's session first."
                )
            sess = self.session_factory(**kw)
            self.registry.set(sess)
            return sess
        return self.registry()

    def configure(self, **kwargs: Any) -> None:
        """Reconfigure the session factory (warns if a session already exists)."""
        if self.registry.has():
            warn(
                "At least one scoped session is already present. configure() can not "
                "affect sessions that have already been created."
            )
        self.session_factory.configure(**kwargs)

    async def remove(self) -> None:
        """Close the current scope's session, if any, and forget it."""
        if self.registry.has():
            await self.registry().close()
        self.registry.clear()

    # -- proxied methods: the current scope's session's, same signatures ---------------

    def __contains__(self, instance: object) -> bool:
        return self._proxied.__contains__(instance)

    def __iter__(self) -> Iterator[object]:
        return self._proxied.__iter__()

    async def aclose(self) -> None:
        return await self._proxied.aclose()

    if _HAS_21_API:

        def add(self, instance: object, *, _warn: bool = True) -> None:
            return self._proxied.add(instance, _warn=_warn)

    else:

        def add(self, instance: object, _warn: bool = True) -> None:  # type: ignore[misc]
            return self._proxied.add(instance, _warn=_warn)

    def add_all(self, instances: Iterable[object]) -> None:
        return self._proxied.add_all(instances)

    def begin(self) -> AsyncSessionTransaction:
        return self._proxied.begin()

    def begin_nested(self) -> AsyncSessionTransaction:
        return self._proxied.begin_nested()

    async def close(self) -> None:
        return await self._proxied.close()

    async def reset(self) -> None:
        return await self._proxied.reset()

    async def commit(self) -> None:
        return await self._proxied.commit()

    async def connection(
        self,
        bind_arguments: _BindArguments | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
        **kw: Any,
    ) -> AsyncConnection:
        return await self._proxied.connection(
            bind_arguments=bind_arguments, execution_options=execution_options, **kw
        )

    async def delete(self, instance: object) -> None:
        return await self._proxied.delete(instance)

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
        return await self._proxied.execute(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    def expire(self, instance: object, attribute_names: Iterable[str] | None = None) -> None:
        return self._proxied.expire(instance, attribute_names=attribute_names)

    def expire_all(self) -> None:
        return self._proxied.expire_all()

    def expunge(self, instance: object) -> None:
        return self._proxied.expunge(instance)

    def expunge_all(self) -> None:
        return self._proxied.expunge_all()

    async def flush(self, objects: Sequence[Any] | None = None) -> None:
        return await self._proxied.flush(objects=objects)

    def get_bind(
        self,
        mapper: _EntityBindKey[_O] | None = None,
        clause: ClauseElement | None = None,
        bind: Engine | Connection | None = None,
        **kw: Any,
    ) -> Engine | Connection:
        return self._proxied.get_bind(mapper=mapper, clause=clause, bind=bind, **kw)

    def is_modified(self, instance: object, include_collections: bool = True) -> bool:
        return self._proxied.is_modified(instance, include_collections=include_collections)

    async def invalidate(self) -> None:
        return await self._proxied.invalidate()

    async def merge(
        self,
        instance: _O,
        *,
        load: bool = True,
        options: Sequence[ORMOption] | None = None,
    ) -> _O:
        return await self._proxied.merge(instance, load=load, options=options)

    async def refresh(
        self,
        instance: object,
        attribute_names: Iterable[str] | None = None,
        with_for_update: ForUpdateParameter = None,
    ) -> None:
        return await self._proxied.refresh(
            instance, attribute_names=attribute_names, with_for_update=with_for_update
        )

    async def rollback(self) -> None:
        return await self._proxied.rollback()

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
        return await self._proxied.scalar(
            statement,
            params,
            execution_options=execution_options,
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
        return await self._proxied.scalars(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

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
        return await self._proxied.get(
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
        return await self._proxied.get_one(
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=execution_options,
        )

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
        return await self._proxied.stream(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

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
        return await self._proxied.stream_scalars(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    if _HAS_21_API:

        async def delete_all(self, instances: Iterable[object]) -> None:
            return await self._proxied.delete_all(instances)

        async def merge_all(
            self,
            instances: Iterable[_O],
            *,
            load: bool = True,
            options: Sequence[ORMOption] | None = None,
        ) -> Sequence[_O]:
            return await self._proxied.merge_all(instances, load=load, options=options)

        def get_async_bind(
            self,
            mapper: _EntityBindKey[_O] | None = None,
            clause: ClauseElement | None = None,
            bind: _AsyncSessionBind | None = None,
            **kw: Any,
        ) -> _AsyncSessionBind:
            return self._proxied.get_async_bind(mapper=mapper, clause=clause, bind=bind, **kw)

    # -- proxied attributes -------------------------------------------------------------

    @property
    def bind(self) -> Any:
        return self._proxied.bind

    @bind.setter
    def bind(self, value: Any) -> None:
        self._proxied.bind = value

    @property
    def dirty(self) -> Any:
        return self._proxied.dirty

    @property
    def deleted(self) -> Any:
        return self._proxied.deleted

    @property
    def new(self) -> Any:
        return self._proxied.new

    @property
    def identity_map(self) -> Any:
        return self._proxied.identity_map

    @identity_map.setter
    def identity_map(self, attr: Any) -> None:
        self._proxied.identity_map = attr

    @property
    def is_active(self) -> bool:
        return self._proxied.is_active

    @property
    def autoflush(self) -> bool:
        return self._proxied.autoflush

    @autoflush.setter
    def autoflush(self, attr: bool) -> None:
        self._proxied.autoflush = attr

    @property
    def no_autoflush(self) -> Any:
        return self._proxied.no_autoflush

    @property
    def info(self) -> Any:
        return self._proxied.info

    @property
    def binds(self) -> Any:
        return self._proxied.binds

    if _HAS_21_API:

        @property
        def execution_options(self) -> Any:
            return self._proxied.execution_options

        @execution_options.setter
        def execution_options(self, value: Any) -> None:
            self._proxied.execution_options = value

    # -- proxied classmethods: AsyncSession's own ------------------------------------------

    @classmethod
    async def close_all(cls) -> None:
        return await AsyncSession.close_all()

    @classmethod
    def object_session(cls, instance: object) -> Session | None:
        return AsyncSession.object_session(instance)

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
        return AsyncSession.identity_key(
            class_, ident, instance=instance, row=row, identity_token=identity_token
        )


_BARE_ROLE = re.compile(r":(meth|attr):`(\w+)`")


def _document_proxies() -> None:
    """Give each proxied member the docstring of the AsyncSession member it forwards
    to (for help() and the API reference), led by a line saying where it goes."""
    for name, member in vars(async_scoped_session).items():
        if name.startswith("_") and name not in ("__contains__", "__iter__"):
            continue
        target = getattr(AsyncSession, name, None)
        if target is None:
            continue  # not a proxy: remove(), configure()
        kind = "attr" if isinstance(member, property) else "meth"
        lead = f"Proxy for :{kind}:`AsyncSession.{name} <async_orm.AsyncSession.{name}>`"
        if isinstance(member, classmethod):
            func = member.__func__
            lead += " (a class method: no session is involved)."
        else:
            func = member
            lead += ", on the current scope's session."
        doc = getattr(target, "__doc__", None)
        if doc:
            # a bare :meth:`bind_table` of AsyncSession's text names AsyncSession's
            doc = _BARE_ROLE.sub(r":\1:`~async_orm.AsyncSession.\2`", inspect.cleandoc(doc))
        func.__doc__ = f"{lead}\n\n{doc}" if doc else lead


_document_proxies()
