"""A request-scoped :class:`~async_orm.AsyncSession` for any ASGI application.

:class:`AsyncSessionMiddleware` is plain ASGI: it works with Starlette,
FastAPI, Django's ASGI handler, or a hand-written ASGI callable, and imports
none of them.  For each HTTP request (and each websocket connection) it

* starts a fresh scope of an :class:`~async_orm.async_scoped_session` keyed
  on :data:`async_orm.scopes.context_scope`, so handler code, tasks it spawns
  and sync code run in a thread pool all see the request's one session;
* creates the session lazily, on the handler's first use (a request that does
  not touch the database costs nothing);
* ends it by the policy it shares with :mod:`async_orm.django`: committed
  when the response starts with a status for which ``commit_on`` returns true
  (by default, below 400), *before* the status line is sent, so a failing
  commit still becomes a 500; rolled back on any other status, on an exception,
  on cancellation and when the client goes away; always closed (shielded from
  cancellation), which returns its connection to the pool and its worker thread
  to the worker pool;
* settles work done after the response started (a streaming body) when the
  app returns: committed if the whole body was sent, rolled back if the client
  went away first.

On the ASGI lifespan it disposes of the engine(s) the sessions are bound to
when the server shuts down.  At startup in a process forked after the
middleware was created (a pre-forking server), it first drops the pooled
connections inherited from the parent, without closing them
(``dispose(close=False)``), so the child opens its own.  An app that does not
speak the lifespan protocol (Django's ASGI handler) gets it spoken for it.

::

    from async_orm import async_scoped_session, async_sessionmaker, create_async_engine
    from async_orm.asgi import AsyncSessionMiddleware, current_session
    from async_orm.scopes import context_scope

    engine = create_async_engine("postgresql+psycopg://app@db/app")
    Session = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False), scopefunc=context_scope
    )
    app.add_middleware(AsyncSessionMiddleware, sessions=Session)

    # in a handler, either of:
    await Session.execute(...)
    session = current_session()
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import Engine

from ._requests import (
    CommitRule,
    abort_sessions,
    commit_on_success,
    end_sessions,
    settle_sessions,
    should_commit,
)
from .engine import AsyncEngine
from .scopes import context_scope
from .scoping import async_scoped_session
from .session import AsyncSession, async_sessionmaker

__all__ = [
    "ASGIApp",
    "AsyncSessionMiddleware",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "commit_on_success",
    "current_session",
]

logger = logging.getLogger("async_orm.asgi")

Scope = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message = MutableMapping[str, Any]
"""An ASGI event message."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

_current: ContextVar[async_scoped_session[Any] | None] = ContextVar(
    "async_orm_asgi_sessions", default=None
)


def current_session() -> AsyncSession:
    """The :class:`~async_orm.AsyncSession` of the request being handled.

    Created on first use in the request; the middleware commits or rolls it
    back and closes it.  Works as a FastAPI dependency
    (``session: AsyncSession = Depends(current_session)``), from async
    handlers, from tasks they spawn, and from sync code Starlette runs in its
    thread pool.  With several nested middlewares, this is the innermost one's.

    :raises RuntimeError: outside a request handled by
        :class:`AsyncSessionMiddleware`.
    """
    sessions = _current.get()
    if sessions is None:
        raise RuntimeError(
            "async_orm.asgi.current_session() was called outside a request handled by "
            "AsyncSessionMiddleware, so there is no request session. Wrap the ASGI app "
            "(app.add_middleware(AsyncSessionMiddleware, sessions=...)), or open a "
            "session yourself: 'async with maker() as session: ...'."
        )
    session: AsyncSession = sessions()
    return session


def _engines_of(maker: async_sessionmaker[Any]) -> list[AsyncEngine]:
    """The engines a session maker binds to (bind, binds, and shards)."""
    found: list[Any] = [maker.kw.get("bind")]
    for key in ("binds", "shards"):
        mapping = maker.kw.get(key)
        if isinstance(mapping, dict):
            found.extend(mapping.values())
    engines: dict[int, AsyncEngine] = {}
    for bind in found:
        if isinstance(bind, AsyncEngine):
            engines.setdefault(id(bind.sync_engine), bind)
        elif isinstance(bind, Engine):
            engines.setdefault(id(bind), AsyncEngine(bind))
    return list(engines.values())


class _Response:
    """What the middleware saw of one HTTP response."""

    __slots__ = ("complete", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.complete = False


class AsyncSessionMiddleware:
    """ASGI middleware giving each request its own :class:`~async_orm.AsyncSession`.

    :param app: the ASGI application to wrap.
    :param sessions: an :class:`~async_orm.async_scoped_session` (the
        request-scoped accessor handlers use; give it
        ``scopefunc=async_orm.scopes.context_scope``), or an
        :class:`~async_orm.async_sessionmaker`, or an engine (sync or async),
        for which a scoped session with ``expire_on_commit=False`` is made.
        Either way the middleware's :attr:`sessions` is the scoped session and
        :func:`current_session` returns the request's session.
    :param commit_on: called with the response status when the response
        starts; true commits, false rolls back.  Default
        :func:`commit_on_success` (below 400).  ``None`` never commits: the
        handler commits itself, and whatever it did not commit is rolled back.
    :param websockets: give websocket connections a session too (committed
        when the app returns normally, rolled back if it raises).  The session
        holds a worker thread from its first use until the socket closes, so a
        long-lived socket should commit as it goes, or use short sessions of
        its own (``async with maker() as session``) and pass ``False`` here.
    :param dispose_engine: dispose of the sessions' engines on lifespan
        shutdown (and, in a forked child process, drop the parent's pooled
        connections on startup).
    """

    sessions: async_scoped_session[Any]
    """The request-scoped session registry."""

    def __init__(
        self,
        app: ASGIApp,
        sessions: async_scoped_session[Any] | async_sessionmaker[Any] | AsyncEngine | Engine,
        *,
        commit_on: CommitRule | None = commit_on_success,
        websockets: bool = True,
        dispose_engine: bool = True,
    ) -> None:
        self.app = app
        if isinstance(sessions, AsyncEngine | Engine):
            sessions = async_sessionmaker(sessions, expire_on_commit=False)
        if isinstance(sessions, async_sessionmaker):
            sessions = async_scoped_session(sessions, scopefunc=context_scope)
        if not isinstance(sessions, async_scoped_session):
            raise TypeError(
                "AsyncSessionMiddleware(sessions=...) takes an async_scoped_session, an "
                f"async_sessionmaker or an engine, not {type(sessions).__name__}"
            )
        self.sessions = sessions
        self.commit_on = commit_on
        self.websockets = websockets
        self.dispose_engine = dispose_engine
        self._pid = os.getpid()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket" and self.websockets:
            await self._websocket(scope, receive, send)
        elif kind == "lifespan" and self.dispose_engine:
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- the request scope ----------------------------------------------------------

    @contextmanager
    def _request_scope(self) -> Iterator[Any]:
        """Enter a fresh scope of the scoped session; yield its registry key."""
        scopefunc = self.sessions.registry.scopefunc
        enter = getattr(scopefunc, "enter", None)
        token = _current.set(self.sessions)
        try:
            if enter is None:  # e.g. task_scope: the key is what the scopefunc says now
                yield scopefunc()
            else:
                with enter() as key:
                    yield key
        finally:
            _current.reset(token)

    def _sessions(self, key: Any) -> list[AsyncSession]:
        """The scope's session, if it was created: zero or one."""
        session: AsyncSession | None = self.sessions.registry.registry.get(key)
        return [] if session is None else [session]

    def _take(self, key: Any) -> list[AsyncSession]:
        """Forget the scope's session (zero or one) and return it, to be ended."""
        session: AsyncSession | None = self.sessions.registry.registry.pop(key, None)
        return [] if session is None else [session]

    # -- protocols --------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _Response()
        commit_on = self.commit_on
        with self._request_scope() as key:

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    response.status = status
                    # settle the transaction before the client sees the status
                    await settle_sessions(
                        self._sessions(key), commit=should_commit(commit_on, status)
                    )
                elif message["type"] == "http.response.body":
                    if not message.get("more_body", False):
                        response.complete = True
                elif message["type"] == "http.response.pathsend":
                    response.complete = True
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            except BaseException:
                await abort_sessions(self._take(key))
                raise
            # Work done after the response started (a streaming body) is settled here:
            # committed only if the whole body went out (not if the client went away).
            await end_sessions(
                self._take(key),
                commit=response.complete and should_commit(commit_on, response.status),
            )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._request_scope() as key:
            try:
                await self.app(scope, receive, send)
            except BaseException:
                await abort_sessions(self._take(key))
                raise
            await end_sessions(self._take(key), commit=self.commit_on is not None)

    async def _dispose(self, close: bool) -> None:
        for engine in _engines_of(self.sessions.session_factory):
            await engine.dispose(close=close)

    async def _startup(self) -> None:
        if os.getpid() != self._pid:
            # forked after the app was built: the pooled connections are the parent's
            await self._dispose(close=False)
            self._pid = os.getpid()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received: list[str] = []
        sent = False

        async def receive_wrapper() -> Message:
            message = await receive()
            received.append(message["type"])
            if message["type"] == "lifespan.startup":
                await self._startup()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal sent
            sent = True
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    await self._dispose(close=True)
                except Exception:
                    logger.exception("async_orm: disposing of the engine at shutdown failed")
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            if sent:
                raise
            # The app does not speak the lifespan protocol (Django's ASGI handler
            # raises on it): speak it for the app, so the engine is still disposed.
            logger.debug("async_orm: the wrapped app refused the lifespan scope", exc_info=True)
            await self._own_lifespan(receive, send, received)

    async def _own_lifespan(self, receive: Receive, send: Send, received: list[str]) -> None:
        if "lifespan.startup" not in received:
            message = await receive()
            if message["type"] != "lifespan.startup":
                return
            await self._startup()
        await send({"type": "lifespan.startup.complete"})
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._dispose(close=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
