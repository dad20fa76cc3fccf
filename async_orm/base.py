"""One async front per sync object, as ``sqlalchemy.ext.asyncio.base`` gives.

:class:`ReversibleProxy` keeps, for each sync object that has an async front (an
Engine, a Connection, a Transaction, a Session, a SessionTransaction), a weak
reference to that front, so ``conn.get_transaction() is conn.get_transaction()`` and
SQLAlchemy's ``_retrieve_proxy_for_target`` / ``_regenerate_proxy_for_target`` work as
there.  The registry holds nothing alive: an entry goes when either side is
garbage-collected.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

__all__ = ["ReversibleProxy"]


class ReversibleProxy:
    """Base of the async fronts that can be found again from their sync object."""

    #: weak reference to a sync object -> weak reference to its async front
    _proxy_objects: ClassVar[dict[weakref.ref[Any], weakref.ref[Any]]] = {}

    __slots__ = ()

    def _assign_proxied(self, target: Any) -> Any:
        """Register this object as the async front of ``target`` (returned)."""
        registry = ReversibleProxy._proxy_objects
        target_ref = weakref.ref(target, _drop_target)

        def drop_proxy(proxy_ref: weakref.ref[Any]) -> None:
            if registry.get(target_ref) is proxy_ref:  # not a later front of target
                del registry[target_ref]

        registry[target_ref] = weakref.ref(self, drop_proxy)
        return target

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Any) -> Any:
        raise NotImplementedError()

    @classmethod
    def _retrieve_proxy_for_target(cls, target: Any, regenerate: bool = True) -> Any:
        """The async front of ``target``; with ``regenerate``, made if it has none."""
        if not regenerate:
            return proxy_of(target)
        return proxy_for(target, lambda: cls._regenerate_proxy_for_target(target))


def _drop_target(target_ref: weakref.ref[Any]) -> None:
    ReversibleProxy._proxy_objects.pop(target_ref, None)


def proxy_of(target: Any) -> Any:
    """The async front registered for ``target``, or None."""
    proxy_ref = ReversibleProxy._proxy_objects.get(weakref.ref(target))
    return proxy_ref() if proxy_ref is not None else None


_RP = TypeVar("_RP", bound=ReversibleProxy)


def proxy_for(target: Any, make: Callable[[], _RP]) -> _RP:
    """The async front of ``target``, made by ``make()`` the first time (and registered,
    unless making it registered it)."""
    found = proxy_of(target)
    if found is None:
        found = make()
        if proxy_of(target) is None:
            found._assign_proxied(target)
    return found  # type: ignore[no-any-return]
