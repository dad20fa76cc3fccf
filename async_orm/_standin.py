"""``install_as_sqlalchemy_asyncio()``: async_orm in place of ``sqlalchemy.ext.asyncio``.

Libraries written for SQLAlchemy's asyncio extension (SQLModel, fastapi-pagination,
sqlakeyset, fastapi-users-db-sqlalchemy, advanced-alchemy, Alembic's async
``env.py``) import ``sqlalchemy.ext.asyncio`` themselves and check
``isinstance(session, AsyncSession)`` against what they imported.  After one call
of :func:`install_as_sqlalchemy_asyncio` (in the spirit of PyMySQL's
``install_as_MySQLdb()``), made before those libraries are imported, the import
resolves to async_orm, so they see async_orm's classes.

What the call replaces, process-wide, and nothing else:

* ``sys.modules`` entries: ``sqlalchemy.ext.asyncio`` -> ``async_orm``, and its
  ``engine``, ``session``, ``result``, ``scoping`` and ``exc`` submodules -> the
  async_orm modules of the same name; the ``asyncio`` attribute of the
  ``sqlalchemy.ext`` package.
* The greenlet helpers that libraries import from ``sqlalchemy.util`` and
  ``sqlalchemy.util.concurrency`` (``greenlet_spawn``, ``await_only``, ``await_``,
  and ``await_fallback`` on SQLAlchemy 2.0): :func:`greenlet_spawn` runs its
  function on the worker thread of the AsyncSession it belongs to, and
  :func:`await_only` inside it hands the coroutine back to the awaiting loop.
  SQLAlchemy's own modules keep the helpers they imported before the call.
* ``async_orm.result._ensure_sync_result`` (SQLModel imports it from
  ``sqlalchemy.ext.asyncio.result``), when async_orm.result does not define it.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Result
from sqlalchemy.orm import Session
from sqlalchemy.orm.state import InstanceState

from . import _worker
from .engine import AsyncConnection
from .exc import AsyncMethodRequired
from .session import AsyncSession, async_session

__all__ = ["await_fallback", "await_only", "greenlet_spawn", "install_as_sqlalchemy_asyncio"]

_T = TypeVar("_T")

_PACKAGE = "sqlalchemy.ext.asyncio"
#: what each name resolves to after the call
_MODULES = {
    _PACKAGE: "async_orm",
    f"{_PACKAGE}.engine": "async_orm.engine",
    f"{_PACKAGE}.session": "async_orm.session",
    f"{_PACKAGE}.result": "async_orm.result",
    f"{_PACKAGE}.scoping": "async_orm.scoping",
    f"{_PACKAGE}.exc": "async_orm.exc",
}
_UTIL_MODULES = (
    "sqlalchemy.util",
    "sqlalchemy.util.concurrency",
    "sqlalchemy.util._concurrency_py3k",  # SQLAlchemy 2.0
)
#: SQLAlchemy's own helpers, kept to delegate to inside a real SQLAlchemy greenlet
_originals: dict[str, Callable[..., Any]] = {}

_Owner = AsyncSession | AsyncConnection


# --------------------------------------------------------------------------
# install


def install_as_sqlalchemy_asyncio() -> None:
    """Make ``import sqlalchemy.ext.asyncio`` (and its ``engine``, ``session``,
    ``result``, ``scoping`` and ``exc`` submodules) resolve to async_orm, for the
    whole process, so that libraries written for SQLAlchemy's asyncio extension
    use async_orm's classes unchanged.

    Call it once, before the application imports those libraries.  It works
    with and without greenlet installed, and calling it again does nothing.
    It refuses (``RuntimeError``) when SQLAlchemy's own ``sqlalchemy.ext.asyncio``
    was already imported, naming the modules that hold it: they would keep
    SQLAlchemy's classes.  See the "Using libraries built for
    sqlalchemy.ext.asyncio" documentation page for what it replaces and its limits.
    """
    current = sys.modules.get(_PACKAGE)
    if current is not None and current is sys.modules["async_orm"]:
        return
    if current is not None:
        raise RuntimeError(_already_imported_message())
    # Left behind by a failed `import sqlalchemy.ext.asyncio` (SQLAlchemy 2.1
    # without greenlet): nothing usable can hold them, replace them.
    for name in [n for n in sys.modules if n.startswith(_PACKAGE + ".")]:
        del sys.modules[name]

    import sqlalchemy.ext
    import sqlalchemy.util
    import sqlalchemy.util.concurrency

    from . import exc as _exc  # noqa: F401  (the submodules, loaded by `import async_orm`)
    from . import result as _result
    from . import scoping as _scoping  # noqa: F401

    if not hasattr(_result, "_ensure_sync_result"):
        _result._ensure_sync_result = _ensure_sync_result  # type: ignore[attr-defined]
    _patch_util()
    for name, target in _MODULES.items():
        sys.modules[name] = sys.modules[target]
    sqlalchemy.ext.asyncio = sys.modules["async_orm"]


def _already_imported_message() -> str:
    holders = _holders_of_sqlalchemy_asyncio()
    if holders:
        shown = ", ".join(holders[:8]) + (
            f" and {len(holders) - 8} more" if len(holders) > 8 else ""
        )
        who = (
            f"Imported by: {shown} (in import order); these modules hold SQLAlchemy's "
            "classes and would keep them."
        )
    else:
        who = "No other module references it yet; it was imported directly."
    return (
        "async_orm.install_as_sqlalchemy_asyncio() was called after SQLAlchemy's own "
        f"{_PACKAGE} had been imported. {who} Call install_as_sqlalchemy_asyncio() "
        "first thing in your application (before importing those libraries, e.g. at "
        "the top of the module that starts it or in a conftest.py), so every "
        f"'import {_PACKAGE}' resolves to async_orm."
    )


def _holders_of_sqlalchemy_asyncio() -> list[str]:
    """The modules (outside SQLAlchemy) that hold SQLAlchemy's asyncio modules or
    one of their classes or functions, in import order (``sys.modules`` keeps it):
    who imported it, first importer first."""
    ours = {
        name: module
        for name, module in list(sys.modules.items())
        if name == _PACKAGE or name.startswith(_PACKAGE + ".")
    }
    targets = {id(module) for module in ours.values()}
    for module in ours.values():
        for value in vars(module).values():
            owner_module = getattr(value, "__module__", None)
            if isinstance(owner_module, str) and owner_module.startswith(_PACKAGE):
                targets.add(id(value))
    holders: list[str] = []
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith("sqlalchemy.") or name == "sqlalchemy":
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        if any(id(value) in targets for value in list(namespace.values())):
            holders.append(name)
    return holders


def _patch_util() -> None:
    replacements: dict[str, Callable[..., Any]] = {
        "greenlet_spawn": greenlet_spawn,
        "await_only": await_only,
        "await_": await_only,
        "await_fallback": await_fallback,
    }
    for module_name in _UTIL_MODULES:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name, replacement in replacements.items():
            original = getattr(module, name, None)
            if original is None or original is replacement:
                continue
            _originals.setdefault(name, original)
            setattr(module, name, replacement)
    concurrency = sys.modules["sqlalchemy.util.concurrency"]
    in_greenlet = getattr(concurrency, "in_greenlet", None)
    if in_greenlet is not None:
        _originals.setdefault("in_greenlet", in_greenlet)


# --------------------------------------------------------------------------
# greenlet_spawn / await_only


def _in_real_greenlet() -> bool:
    """True inside a greenlet of SQLAlchemy's own greenlet_spawn (greenlet installed)."""
    in_greenlet = _originals.get("in_greenlet")
    if in_greenlet is None:
        return False
    try:
        return bool(in_greenlet())
    except (ImportError, ValueError):  # greenlet is not installed
        return False


def _no_owner(what: str, fix: str) -> sa_exc.InvalidRequestError:
    return sa_exc.InvalidRequestError(
        f"greenlet_spawn() was handed a function of {what}, which no async_orm "
        "AsyncSession runs: async_orm (installed as sqlalchemy.ext.asyncio) runs such "
        "functions on the worker thread of the AsyncSession they belong to, and would "
        f"otherwise do its database I/O on the event loop thread. {fix}"
    )


def _owner_of(value: object) -> _Owner | None:
    """The AsyncSession / AsyncConnection that ``value`` belongs to, ``None`` for a
    value of no session, or an error for a sync-only session or connection."""
    if isinstance(value, AsyncSession | AsyncConnection):
        return value
    if isinstance(value, Session):
        owner = async_session(value)
        if owner is None:
            raise _no_owner(
                "a sync Session",
                "Use an AsyncSession (async_orm.async_sessionmaker) or call the sync "
                "function directly in sync code.",
            )
        return owner
    if isinstance(value, Connection):
        raise _no_owner(
            "a sync Connection",
            "Run it on its AsyncConnection instead: await async_conn.run_sync(fn).",
        )
    if isinstance(value, Result):
        raise _no_owner(
            "a sync Result",
            "Read results through the AsyncSession/AsyncConnection that made them.",
        )
    state = getattr(value, "_sa_instance_state", None)
    if isinstance(state, InstanceState):
        session = state.session
        return _owner_of(session) if session is not None else None
    return None


def _candidates(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Iterator[Any]:
    """What ``fn(*args, **kwargs)`` may work on: the bound object, partial and closure
    arguments, the arguments, and the items of argument containers."""
    direct: list[Any] = []
    inner: Any = fn
    while isinstance(inner, functools.partial):
        direct.extend(inner.args)
        direct.extend(inner.keywords.values())
        inner = inner.func
    bound = getattr(inner, "__self__", None)
    if bound is not None and not isinstance(bound, types.ModuleType):
        yield bound
    for cell in getattr(inner, "__closure__", None) or ():
        try:
            direct.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    direct.extend(args)
    direct.extend(kwargs.values())
    for value in direct:
        yield value
        if isinstance(value, list | tuple | set | frozenset):
            yield from value
        elif isinstance(value, dict):
            yield from value.values()


def _find_owner(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> _Owner | None:
    for value in _candidates(fn, args, kwargs):
        owner = _owner_of(value)
        if owner is not None:
            return owner
    return None


def _on_worker(fn: Callable[..., _T], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _T:
    """Runs on the owner's worker: call ``fn``, and buffer a Result it returns so
    that reading it on the event loop does no I/O (as AsyncSession.execute)."""
    from .session import _ensure_sync_result as buffer

    result = fn(*args, **kwargs)
    if isinstance(result, Result):
        name = getattr(fn, "__name__", "greenlet_spawn")
        return buffer(result, name)  # type: ignore[return-value]
    return result


async def greenlet_spawn(
    fn: Callable[..., _T], *args: Any, _require_await: bool = False, **kwargs: Any
) -> _T:
    """async_orm's stand-in for ``sqlalchemy.util.greenlet_spawn``.

    Runs ``fn(*args, **kwargs)`` on the worker thread of the AsyncSession (or
    AsyncConnection) it belongs to, found from the object a bound method is bound
    to (``greenlet_spawn(session.sync_session.exec, stmt)``), from ``partial`` and
    closure arguments, from the arguments, or from ORM instances among them (one
    level into lists, tuples, sets and dicts).  A Result it returns is buffered
    there.  A function of a sync-only Session, Connection or Result is refused.
    A function of no session at all (fastapi-pagination builds its page model
    this way) runs at once on the calling thread, where async_orm's event loop
    guard still refuses any database I/O and :func:`await_only` refuses too.
    """
    owner = _find_owner(fn, args, kwargs)
    if owner is not None:
        return await owner.run_sync(lambda _sync: _on_worker(fn, args, kwargs))
    original = _originals.get("greenlet_spawn")
    if original is not None and _greenlet_installed():
        return await original(fn, *args, _require_await=_require_await, **kwargs)  # type: ignore[no-any-return]
    return fn(*args, **kwargs)


def _greenlet_installed() -> bool:
    try:
        import greenlet  # noqa: F401  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return False
    return True


async def _awaiting(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _as_coroutine(awaitable: Awaitable[_T]) -> Coroutine[Any, Any, _T]:
    if asyncio.iscoroutine(awaitable):
        return awaitable
    return _awaiting(awaitable)


def _close(awaitable: Awaitable[Any]) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()


def await_only(awaitable: Awaitable[_T]) -> _T:
    """async_orm's stand-in for ``sqlalchemy.util.await_only`` / ``await_``.

    Inside a function that async_orm runs on a session's worker thread (one
    handed to :func:`greenlet_spawn`, ``run_sync()``, or a listener of an awaited
    call), it hands ``awaitable`` back to the event loop that awaits that call, as
    asgiref's ``async_to_sync`` does, and blocks the worker until it is done; the
    event loop thread never waits.  The coroutine must not await the same
    session (that would need the worker it is blocking): that raises
    :class:`~async_orm.exc.ReentrantCallError`.  Anywhere else it raises
    ``MissingGreenlet``, as SQLAlchemy's does outside ``greenlet_spawn``.
    """
    if _worker.can_hand_back():
        return _worker.run_in_calling_loop(_as_coroutine(awaitable))
    original = _originals.get("await_only") or _originals.get("await_")
    if original is not None and _in_real_greenlet():
        return original(awaitable)  # type: ignore[no-any-return]
    _close(awaitable)
    raise sa_exc.MissingGreenlet(
        "await_only() was called outside a function that async_orm runs on a "
        "session's worker thread, so there is no event loop call to hand the "
        "coroutine back to. In async code, await it directly; from sync code, run "
        "that code with await session.run_sync(fn) (or hand it to greenlet_spawn() "
        "with the session's sync object)."
    )


def await_fallback(awaitable: Awaitable[_T]) -> _T:
    """async_orm's stand-in for SQLAlchemy 2.0's ``await_fallback``: as
    :func:`await_only`, and on a thread with no running event loop it runs the
    awaitable in a new one."""
    if not _worker.can_hand_back() and not _in_real_greenlet():
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_as_coroutine(awaitable))
    return await_only(awaitable)


async def _ensure_sync_result(result: Any, calling_method: Any) -> Any:
    """The stand-in for ``sqlalchemy.ext.asyncio.result._ensure_sync_result``
    (SQLModel awaits it after ``greenlet_spawn``): refuses a server-side cursor
    result, which only ``stream()`` can read without I/O on the event loop.
    ``greenlet_spawn`` has already buffered a cursor result on the worker."""
    is_cursor = getattr(result, "_is_cursor", None)
    if is_cursor is None:
        return result
    raw = result if is_cursor else getattr(result, "raw", None)
    if raw is not None and raw.context._is_server_side:
        name = getattr(calling_method, "__name__", calling_method)
        raise AsyncMethodRequired(
            f"Can't use the {name}() method with a server-side cursor. Use the "
            "AsyncSession.stream() method for an async streaming result set."
        )
    return result
