"""async_scoped_session: one AsyncSession per scope (task, request, context).

Mirrors ``sqlalchemy.ext.asyncio.scoping``.  The proxied methods and
attributes are declared once, as lists, and forward to the session of the
current scope; their signatures are those of :class:`AsyncSession`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.util import ScopedRegistry, warn

from .session import _HAS_21_API, AsyncSession, async_sessionmaker

__all__ = ["async_scoped_session"]

_AS = TypeVar("_AS", bound=AsyncSession)

#: methods and properties forwarded to the current scope's session
_METHODS = [
    "__contains__",
    "__iter__",
    "aclose",
    "add",
    "add_all",
    "begin",
    "begin_nested",
    "close",
    "commit",
    "connection",
    "delete",
    "execute",
    "expire",
    "expire_all",
    "expunge",
    "expunge_all",
    "flush",
    "get_bind",
    "is_modified",
    "invalidate",
    "merge",
    "refresh",
    "rollback",
    "scalar",
    "scalars",
    "get",
    "get_one",
    "stream",
    "stream_scalars",
    "reset",
] + (["delete_all", "merge_all", "get_async_bind"] if _HAS_21_API else [])
_CLASSMETHODS = ["close_all", "object_session", "identity_key"]
_PROPERTIES = [
    "bind",
    "dirty",
    "deleted",
    "new",
    "identity_map",
    "is_active",
    "autoflush",
    "no_autoflush",
    "info",
] + (["binds", "execution_options"] if _HAS_21_API else [])
_SETTABLE = {"bind", "identity_map", "autoflush", "execution_options"}


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

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


def _forward_method(name: str) -> Callable[..., Any]:
    target = getattr(AsyncSession, name)
    if inspect.iscoroutinefunction(target):

        async def forward_async(self: async_scoped_session[Any], *args: Any, **kw: Any) -> Any:
            return await getattr(self.registry(), name)(*args, **kw)

        return functools.update_wrapper(forward_async, target)

    def forward(self: async_scoped_session[Any], *args: Any, **kw: Any) -> Any:
        return getattr(self.registry(), name)(*args, **kw)

    return functools.update_wrapper(forward, target)


def _forward_classmethod(name: str) -> Any:
    target = getattr(AsyncSession, name).__func__
    if inspect.iscoroutinefunction(target):

        async def forward_async(cls: type[Any], *args: Any, **kw: Any) -> Any:
            return await getattr(AsyncSession, name)(*args, **kw)

        return classmethod(functools.update_wrapper(forward_async, target))

    def forward(cls: type[Any], *args: Any, **kw: Any) -> Any:
        return getattr(AsyncSession, name)(*args, **kw)

    return classmethod(functools.update_wrapper(forward, target))


def _forward_property(name: str) -> property:
    def fget(self: async_scoped_session[Any]) -> Any:
        return getattr(self.registry(), name)

    def fset(self: async_scoped_session[Any], value: Any) -> None:
        setattr(self.registry(), name, value)

    doc = getattr(AsyncSession, name).__doc__
    return property(fget, fset if name in _SETTABLE else None, doc=doc)


for _name in _METHODS:
    setattr(async_scoped_session, _name, _forward_method(_name))
for _name in _CLASSMETHODS:
    setattr(async_scoped_session, _name, _forward_classmethod(_name))
for _name in _PROPERTIES:
    setattr(async_scoped_session, _name, _forward_property(_name))
del _name
