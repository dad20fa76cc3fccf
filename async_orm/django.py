"""Using async_orm in a Django project: engines from settings, a request-scoped
session for async (and sync) views, and asgiref's sync/async bridges.

Settings (all optional)::

    ASYNC_ORM_DATABASES = {
        "default": {
            # a sync SQLAlchemy URL; without it, DATABASES["default"] is translated
            "URL": "postgresql+psycopg://app@db:5432/app",
            "ENGINE_OPTIONS": {"pool_size": 10},  # create_async_engine() keywords
            "SESSION_OPTIONS": {},  # async_sessionmaker() keywords
        },
    }
    ASYNC_ORM_AUTOCOMMIT = True  # commit responses below 400 (or a callable(status))

    MIDDLEWARE = [..., "async_orm.django.AsyncSessionMiddleware", ...]

In a view::

    from async_orm.django import current_session

    async def article(request, pk):
        session = current_session()
        article = await session.get(Article, pk)
        ...

The request's session is keyed on :data:`async_orm.scopes.local_scope` (an
``asgiref.local.Local``), so a sync function called through
``sync_to_async`` (or a sync view) gets the *same* session from
:func:`current_session`, and can run sync SQLAlchemy code on that session's
worker thread with :func:`run_in_session`.

This module imports Django only when a function needing settings is called.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Concatenate, Protocol, TypeVar

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from typing_extensions import ParamSpec

from . import _worker
from ._requests import CommitRule, abort_sessions, commit_on_success, end_sessions, should_commit
from .engine import AsyncEngine, create_async_engine
from .scopes import local_scope
from .scoping import async_scoped_session
from .session import AsyncSession, async_sessionmaker

__all__ = [
    "AsyncSessionMiddleware",
    "current_session",
    "database_settings",
    "dispose_engines",
    "engine_options_from_django",
    "get_engine",
    "get_scoped_session",
    "get_sessionmaker",
    "run_in_session",
    "session_scope",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")

DEFAULT_DB_ALIAS = "default"

#: Django ``DATABASES`` engines and the SQLAlchemy dialect+driver used for them.
_DRIVERS = {
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.db.backends.postgresql_psycopg2": "postgresql+psycopg",
    "django.contrib.gis.db.backends.postgis": "postgresql+psycopg",
    "django.db.backends.sqlite3": "sqlite",
    "django.contrib.gis.db.backends.spatialite": "sqlite",
    "django.db.backends.mysql": "mysql+pymysql",
    "django.contrib.gis.db.backends.mysql": "mysql+pymysql",
}

#: ``DATABASES[...]["OPTIONS"]`` keys that Django itself consumes (not DBAPI arguments).
_DJANGO_ONLY_OPTIONS = frozenset(
    {
        "isolation_level",
        "pool",
        "server_side_binding",
        "assume_role",
        "transaction_mode",
        "init_command",
    }
)

_V = TypeVar("_V")

_lock = _worker.reentrant_lock()
_engines: dict[str, AsyncEngine] = {}
_makers: dict[str, async_sessionmaker[AsyncSession]] = {}
_scoped: dict[str, async_scoped_session[AsyncSession]] = {}
_receiver_connected = False


class _Response(Protocol):
    status_code: int


# --------------------------------------------------------------------------
# settings and engines


def _settings() -> Any:
    """``django.conf.settings``; the first call also starts listening for
    ``setting_changed`` (tests overriding the settings get fresh engines).

    Django is imported here, by name, so that this module imports (and
    type-checks) without it, and Django's missing type hints stay out of it.
    """
    global _receiver_connected
    settings = importlib.import_module("django.conf").settings
    if not _receiver_connected:
        signals = importlib.import_module("django.core.signals")
        signals.setting_changed.connect(_on_setting_changed, dispatch_uid="async_orm.django")
        _receiver_connected = True
    return settings


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("ASYNC_ORM_DATABASES", "DATABASES"):
        _forget_engines()


def _take_engines() -> list[AsyncEngine]:
    """Forget the cached engines, makers and scoped sessions; return the engines."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _makers.clear()
        _scoped.clear()
    return engines


def _forget_engines() -> list[AsyncEngine]:
    """Drop the cached engines (closing their idle connections) and return them."""
    engines = _take_engines()
    for engine in engines:
        # No statement runs here: this only closes the pool's idle connections.
        engine.sync_engine.dispose()
    return engines


def engine_options_from_django(database: Mapping[str, Any]) -> tuple[URL, dict[str, Any]]:
    """Translate one entry of Django's ``DATABASES`` into a sync SQLAlchemy URL
    and :func:`~async_orm.create_async_engine` keywords.

    PostgreSQL becomes ``postgresql+psycopg``, MySQL ``mysql+pymysql``, SQLite
    ``sqlite``.  DBAPI options in ``OPTIONS`` become ``connect_args``; the
    options Django consumes itself (``isolation_level``, ``pool``, ...) are
    left out.

    :raises ValueError: for a database engine async_orm has no driver for.
    """
    backend = database.get("ENGINE", "")
    drivername = _DRIVERS.get(backend)
    if drivername is None:
        raise ValueError(
            f"async_orm cannot translate the Django database ENGINE {backend!r} into a "
            "SQLAlchemy URL. Give the URL yourself: ASYNC_ORM_DATABASES = {alias: {'URL': "
            "'dialect+driver://...'}}."
        )
    options = {
        key: value
        for key, value in dict(database.get("OPTIONS") or {}).items()
        if key not in _DJANGO_ONLY_OPTIONS
    }
    name = database.get("NAME")
    if drivername == "sqlite":
        db = str(name) if name else ""
        url = URL.create("sqlite", database=None if db in ("", ":memory:") else db)
    else:
        port = database.get("PORT")
        url = URL.create(
            drivername,
            username=database.get("USER") or None,
            password=database.get("PASSWORD") or None,
            host=database.get("HOST") or None,
            port=int(port) if port else None,
            database=str(name) if name else None,
        )
    kwargs: dict[str, Any] = {}
    if options:
        kwargs["connect_args"] = options
    return url, kwargs


def database_settings(using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """The effective async_orm settings of database ``using``: ``URL``,
    ``ENGINE_OPTIONS`` and ``SESSION_OPTIONS``, from ``ASYNC_ORM_DATABASES``,
    falling back to Django's ``DATABASES`` for the URL."""
    settings = _settings()
    configured: Mapping[str, Any] = getattr(settings, "ASYNC_ORM_DATABASES", {}).get(using, {})
    engine_options = dict(configured.get("ENGINE_OPTIONS") or {})
    url = configured.get("URL")
    if url is None:
        databases = getattr(settings, "DATABASES", {})
        if using not in databases:
            raise LookupError(
                f"async_orm has no database {using!r}: it is in neither "
                "ASYNC_ORM_DATABASES nor DATABASES. Add ASYNC_ORM_DATABASES = "
                f"{{{using!r}: {{'URL': 'dialect+driver://...'}}}} to the settings."
            )
        url, translated = engine_options_from_django(databases[using])
        for key, value in translated.items():
            engine_options.setdefault(key, value)
    session_options: dict[str, Any] = {"expire_on_commit": False}
    session_options.update(configured.get("SESSION_OPTIONS") or {})
    return {"URL": url, "ENGINE_OPTIONS": engine_options, "SESSION_OPTIONS": session_options}


def _cached(cache: dict[str, _V], using: str, make: Callable[[], _V]) -> _V:
    """``cache[using]``, made once under the module lock (re-entrant: a maker may
    need the engine, made the same way)."""
    found = cache.get(using)
    if found is not None:
        return found
    with _lock:
        found = cache.get(using)
        if found is None:
            found = cache[using] = make()
        return found


def get_engine(using: str = DEFAULT_DB_ALIAS) -> AsyncEngine:
    """The :class:`~async_orm.AsyncEngine` of database ``using``, created from
    the settings on first use and shared by the whole process (sync code can
    use its ``sync_engine``, which shares the connection pool)."""

    def make() -> AsyncEngine:
        config = database_settings(using)
        return create_async_engine(config["URL"], **config["ENGINE_OPTIONS"])

    return _cached(_engines, using, make)


def get_sessionmaker(using: str = DEFAULT_DB_ALIAS) -> async_sessionmaker[AsyncSession]:
    """The :class:`~async_orm.async_sessionmaker` of database ``using``, with
    its ``SESSION_OPTIONS`` (``expire_on_commit=False`` unless set)."""

    def make() -> async_sessionmaker[AsyncSession]:
        options = database_settings(using)["SESSION_OPTIONS"]
        return async_sessionmaker(get_engine(using), **options)

    return _cached(_makers, using, make)


def get_scoped_session(using: str = DEFAULT_DB_ALIAS) -> async_scoped_session[AsyncSession]:
    """The :class:`~async_orm.async_scoped_session` of database ``using``,
    keyed on :data:`async_orm.scopes.local_scope` (one session per request
    under :class:`AsyncSessionMiddleware`)."""
    return _cached(
        _scoped,
        using,
        lambda: async_scoped_session(get_sessionmaker(using), scopefunc=local_scope),
    )


def current_session(using: str = DEFAULT_DB_ALIAS) -> AsyncSession:
    """The request's :class:`~async_orm.AsyncSession` for database ``using``.

    Created on first use; :class:`AsyncSessionMiddleware` commits or rolls it
    back and closes it when the response is ready.  Sync code reached from the
    request through ``sync_to_async`` (and sync views) gets the same session.
    Outside a request, use :func:`session_scope`.
    """
    session: AsyncSession = get_scoped_session(using)()
    return session


def run_in_session(
    fn: Callable[Concatenate[Session, _P], _T],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """From sync code, run ``fn(sync_session, *args, **kwargs)`` on the worker
    thread of the request's default-database session and return its result.

    For sync views and sync helpers called through ``sync_to_async``: existing
    code that takes a :class:`~sqlalchemy.orm.Session` runs as is, inside the
    request's transaction.  (It is ``async_to_sync(session.run_sync)``.)  For
    another database, use ``async_to_sync(current_session(using).run_sync)``.
    Do not call it from async code: ``await current_session().run_sync(fn)``.
    """
    session = current_session()
    return async_to_sync(session.run_sync)(fn, *args, **kwargs)


async def dispose_engines() -> None:
    """Dispose of every engine this module created, and forget them (the next
    :func:`get_engine` creates a new one from the settings)."""
    for engine in _take_engines():
        await engine.dispose()


# --------------------------------------------------------------------------
# ending a scope


def _pop_sessions(key: Any) -> list[AsyncSession]:
    with _lock:
        registries = list(_scoped.values())
    found: list[AsyncSession] = []
    for scoped in registries:
        session = scoped.registry.registry.pop(key, None)
        if session is not None:
            found.append(session)
    return found


def _has_sessions(key: Any) -> bool:
    with _lock:
        registries = list(_scoped.values())
    return any(key in scoped.registry.registry for scoped in registries)


async def _end_scope(key: Any, commit: bool) -> None:
    """End every session of the scope ``key`` (committed first if ``commit``), by
    the policy shared with :mod:`async_orm.asgi`."""
    await end_sessions(_pop_sessions(key), commit=commit)


async def _abort_scope(key: Any) -> None:
    """Close every session of the scope ``key`` after an exception."""
    await abort_sessions(_pop_sessions(key))


@asynccontextmanager
async def session_scope(using: str = DEFAULT_DB_ALIAS) -> AsyncIterator[AsyncSession]:
    """A request-like scope for code outside a request (a management command,
    a task queue job): inside the block, :func:`current_session` (also from
    code reached through ``sync_to_async``) returns the yielded session; at the
    end its work is committed (rolled back if the block raises) and closed.

    ::

        async with session_scope() as session:
            session.add(Article(title="..."))
    """
    with local_scope.enter() as key:
        try:
            yield current_session(using)
        except BaseException:
            await _abort_scope(key)
            raise
        await _end_scope(key, commit=True)


# --------------------------------------------------------------------------
# middleware


def _commit_rule() -> CommitRule | None:
    """``ASYNC_ORM_AUTOCOMMIT``: true (the default) commits below 400, false never,
    and a callable taking the status decides."""
    setting = getattr(_settings(), "ASYNC_ORM_AUTOCOMMIT", True)
    if callable(setting):
        rule: CommitRule = setting
        return rule
    return commit_on_success if setting else None


class AsyncSessionMiddleware:
    """Django middleware: one async_orm session per request and database.

    Sessions are created lazily by :func:`current_session`.  When the view's
    response is ready, the middleware ends them by the policy it shares with
    :class:`async_orm.asgi.AsyncSessionMiddleware`: each session with work is
    committed if the status passes ``ASYNC_ORM_AUTOCOMMIT`` (by default, below
    400), before the response is returned, so a failing commit becomes a 500;
    anything else (an error status, an exception, a cancellation or a client
    that went away) commits nothing; every session is closed, shielded from
    cancellation.  Django turns a view's exception into a 500 response before
    it gets here.  It is async-capable (used as is under ASGI, no thread hop)
    and sync-capable (under WSGI it ends the sessions through
    ``async_to_sync``).

    The sessions are settled before the response is returned, so a streaming
    response body must not use :func:`current_session`; open a session of its
    own (``async with get_sessionmaker()() as session``).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        """Handle a request (returns a coroutine under an async handler)."""
        if self._is_async:
            return self.__acall__(request)
        with local_scope.enter() as key:
            try:
                response: _Response = self.get_response(request)
            except BaseException:
                if _has_sessions(key):
                    async_to_sync(_abort_scope)(key)
                raise
            if _has_sessions(key):
                async_to_sync(_end_scope)(key, should_commit(_commit_rule(), response.status_code))
            return response

    async def __acall__(self, request: Any) -> Any:
        """Handle a request under an async handler."""
        with local_scope.enter() as key:
            try:
                response: _Response = await self.get_response(request)
            except BaseException:
                await _abort_scope(key)
                raise
            await _end_scope(key, should_commit(_commit_rule(), response.status_code))
            return response
