"""A Starlette app and a FastAPI app with the same endpoints, both using the
request session of ``async_orm.asgi.AsyncSessionMiddleware``.

``Hooks`` lets a test hold requests at known points: a barrier that concurrent
requests meet at while each holds its session, and a blocking ``run_sync``
call (entered / release events) to cancel a request in the middle of a
database call.  ``CloseGate`` holds a session's close at the moment it returns
its connection to the pool, to cancel a request while its session is closing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, WebSocket
from pydantic import BaseModel
from sqlalchemy import event, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket

from async_orm import AsyncSession, async_scoped_session
from async_orm.asgi import AsyncSessionMiddleware, Message, current_session
from tests.integrations.rendezvous import Rendezvous
from tests.models import Address, User


class Hooks:
    """Synchronization points a test controls."""

    def __init__(self) -> None:
        self.barrier: Rendezvous | None = None
        self.entered = asyncio.Event()
        self.release = threading.Event()
        self.loop = asyncio.get_running_loop()

    def block(self, session: Session) -> None:
        """Runs on the session's worker: signal the test, wait to be released."""
        self.loop.call_soon_threadsafe(self.entered.set)
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the blocked call")


class CloseGate:
    """Holds the next connection returned to ``sync_engine``'s pool (a session
    closing, on its worker thread) until the test sets :attr:`release`."""

    def __init__(self, sync_engine: sa.Engine) -> None:
        self.entered = asyncio.Event()
        self.release = threading.Event()
        self.loop = asyncio.get_running_loop()
        self._armed = True
        self._engine = sync_engine
        event.listen(sync_engine, "reset", self._reset)

    def _reset(self, *args: Any) -> None:
        if not self._armed:
            return
        self._armed = False
        self.loop.call_soon_threadsafe(self.entered.set)
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the held close")

    async def cancel_while_held(self, request: asyncio.Task[Any]) -> None:
        """Cancel ``request`` once a close is held; check that the request cannot end
        before the close does; release the close; expect the ``CancelledError``."""
        await asyncio.wait_for(self.entered.wait(), timeout=10)
        request.cancel()
        for _ in range(10):  # let the loop run: an unshielded close would end now
            await asyncio.sleep(0)
        assert not request.done(), "the request ended while its session was still closing"
        self.release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, timeout=10)

    def remove(self) -> None:
        self.release.set()
        event.remove(self._engine, "reset", self._reset)


async def _session_info(session: AsyncSession, hooks: Hooks) -> dict[str, Any]:
    thread = await session.run_sync(lambda s: threading.get_ident())
    if hooks.barrier is not None:
        await hooks.barrier.wait()  # every request holds its session (and thread) here
    return {"session": id(session), "thread": thread, "loop_thread": threading.get_ident()}


async def _add_user(session: AsyncSession, name: str) -> User:
    user = User(name=name)
    session.add(user)
    await session.flush()
    return user


def _add_duplicates(session: AsyncSession) -> None:
    """Pending rows that violate a unique constraint when flushed (by the commit)."""
    session.add(
        User(name="dup", addresses=[Address(email="same@x.org"), Address(email="same@x.org")])
    )


async def _shared_sessions(session: AsyncSession) -> dict[str, bool]:
    async def child() -> AsyncSession:
        return current_session()

    children = await asyncio.gather(child(), child())
    threaded = await run_in_threadpool(current_session)
    return {
        "children": all(c is session for c in children),
        "threadpool": threaded is session,
    }


def build_starlette(sessions: Any, hooks: Hooks, **middleware_kw: Any) -> Starlette:
    """Starlette endpoints using the scoped session (``Session``) directly."""
    Session: async_scoped_session[AsyncSession] | None = (
        sessions if isinstance(sessions, async_scoped_session) else None
    )

    def session() -> AsyncSession:
        return Session() if Session is not None else current_session()

    async def users(request: Request) -> Response:
        s = session()
        if request.method == "POST":
            user = await _add_user(s, (await request.json())["name"])
            return JSONResponse({"id": user.id, "name": user.name}, status_code=201)
        rows = (await s.scalars(select(User).order_by(User.id))).all()
        return JSONResponse([{"id": u.id, "name": u.name} for u in rows])

    async def user_detail(request: Request) -> Response:
        s = session()
        user = await s.get(User, int(request.path_params["pk"]))
        if user is None:
            raise StarletteHTTPException(404)
        if request.method == "PUT":
            user.name = (await request.json())["name"]
            await s.flush()
        elif request.method == "DELETE":
            await s.delete(user)
            return Response(status_code=204)
        return JSONResponse({"id": user.id, "name": user.name})

    async def fail(request: Request) -> Response:
        await _add_user(session(), "doomed")
        raise RuntimeError("the handler failed after writing")

    async def conflict(request: Request) -> Response:
        await _add_user(session(), "conflicted")
        raise StarletteHTTPException(409)

    async def redirect(request: Request) -> Response:
        await _add_user(session(), "redirected")
        return Response(status_code=303, headers={"location": "/users"})

    async def explicit_commit(request: Request) -> Response:
        s = session()
        await _add_user(s, "committed-by-handler")
        await s.commit()
        await _add_user(s, "not-committed")
        return Response(status_code=201)

    async def session_info(request: Request) -> Response:
        return JSONResponse(await _session_info(session(), hooks))

    async def duplicate(request: Request) -> Response:
        _add_duplicates(session())
        return JSONResponse({"created": True}, status_code=201)  # the commit will fail

    async def block(request: Request) -> Response:
        s = session()
        await _add_user(s, "blocked")
        await s.run_sync(hooks.block)
        return Response(status_code=201)

    async def stream(request: Request) -> Response:
        s = session()
        await _add_user(s, "before-stream")

        async def body() -> AsyncIterator[bytes]:
            await _add_user(s, "during-stream")
            yield b"first chunk\n"
            hooks.entered.set()
            await asyncio.Event().wait()  # until the client goes away
            yield b"never sent\n"

        return StreamingResponse(body())

    async def shared(request: Request) -> Response:
        s = session()
        result = await _shared_sessions(s)
        result["scoped"] = Session is None or Session() is current_session()
        return JSONResponse(result)

    async def ws(websocket: StarletteWebSocket) -> None:
        await websocket.accept()
        name = await websocket.receive_text()
        user = await _add_user(session(), name)
        await websocket.send_json({"id": user.id})
        if name.startswith("fail"):
            raise RuntimeError("the websocket handler failed")
        await websocket.close()

    routes = [
        Route("/users", users, methods=["GET", "POST"]),
        Route("/users/{pk:int}", user_detail, methods=["GET", "PUT", "DELETE"]),
        Route("/fail", fail, methods=["POST"]),
        Route("/conflict", conflict, methods=["POST"]),
        Route("/redirect", redirect, methods=["POST"]),
        Route("/explicit-commit", explicit_commit, methods=["POST"]),
        Route("/session-info", session_info),
        Route("/duplicate", duplicate, methods=["POST"]),
        Route("/block", block, methods=["POST"]),
        Route("/stream", stream),
        Route("/shared", shared),
        WebSocketRoute("/ws", ws),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AsyncSessionMiddleware, sessions=sessions, **middleware_kw)],
    )


class UserIn(BaseModel):
    name: str


def sync_dependency() -> AsyncSession:
    """A sync FastAPI dependency: FastAPI runs it in its thread pool."""
    return current_session()


DbSession = Annotated[AsyncSession, Depends(current_session)]


async def get_user(pk: int, session: DbSession) -> User:
    user = await session.get(User, pk)
    if user is None:
        raise HTTPException(404)
    return user


UserById = Annotated[User, Depends(get_user)]
ThreadPoolSession = Annotated[AsyncSession, Depends(sync_dependency)]


def build_fastapi(sessions: Any, hooks: Hooks, **middleware_kw: Any) -> FastAPI:
    """FastAPI endpoints getting the request session through ``Depends``."""
    app = FastAPI()
    app.add_middleware(AsyncSessionMiddleware, sessions=sessions, **middleware_kw)

    @app.post("/users", status_code=201)
    async def create_user(body: UserIn, session: DbSession) -> dict[str, Any]:
        user = await _add_user(session, body.name)
        return {"id": user.id, "name": user.name}

    @app.get("/users")
    async def list_users(session: DbSession) -> list[Any]:
        rows = (await session.scalars(select(User).order_by(User.id))).all()
        return [{"id": u.id, "name": u.name} for u in rows]

    @app.get("/users/{pk}")
    async def read_user(user: UserById) -> dict[str, Any]:
        return {"id": user.id, "name": user.name}

    @app.put("/users/{pk}")
    async def rename_user(
        body: UserIn,
        user: UserById,
        session: DbSession,
    ) -> dict[str, Any]:
        user.name = body.name
        await session.flush()
        return {"id": user.id, "name": user.name}

    @app.delete("/users/{pk}", status_code=204)
    async def delete_user(user: UserById, session: DbSession) -> Response:
        await session.delete(user)
        return Response(status_code=204)

    @app.post("/fail")
    async def fail(session: DbSession) -> None:
        await _add_user(session, "doomed")
        raise RuntimeError("the handler failed after writing")

    @app.post("/conflict")
    async def conflict(session: DbSession) -> None:
        await _add_user(session, "conflicted")
        raise HTTPException(409)

    @app.post("/redirect")
    async def redirect(session: DbSession) -> Response:
        await _add_user(session, "redirected")
        return Response(status_code=303, headers={"location": "/users"})

    @app.post("/explicit-commit", status_code=201)
    async def explicit_commit(session: DbSession) -> None:
        await _add_user(session, "committed-by-handler")
        await session.commit()
        await _add_user(session, "not-committed")

    @app.get("/session-info")
    async def session_info(session: DbSession) -> dict[str, Any]:
        return await _session_info(session, hooks)

    @app.post("/duplicate", status_code=201)
    async def duplicate(session: DbSession) -> dict[str, bool]:
        _add_duplicates(session)
        return {"created": True}  # the commit will fail

    @app.post("/block", status_code=201)
    async def block(session: DbSession) -> None:
        await _add_user(session, "blocked")
        await session.run_sync(hooks.block)

    @app.get("/stream")
    async def stream(session: DbSession) -> Response:
        await _add_user(session, "before-stream")

        async def body() -> AsyncIterator[bytes]:
            await _add_user(session, "during-stream")
            yield b"first chunk\n"
            hooks.entered.set()
            await asyncio.Event().wait()  # until the client goes away
            yield b"never sent\n"

        return StreamingResponse(body())

    @app.get("/shared")
    async def shared(
        session: DbSession,
        from_thread: ThreadPoolSession,
    ) -> dict[str, bool]:
        result = await _shared_sessions(session)
        result["scoped"] = from_thread is session
        return result

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, session: DbSession) -> None:
        await websocket.accept()
        name = await websocket.receive_text()
        user = await _add_user(session, name)
        await websocket.send_json({"id": user.id})
        if name.startswith("fail"):
            raise RuntimeError("the websocket handler failed")
        await websocket.close()

    return app


async def run_lifespan(app: Any, between: Callable[[], Any]) -> list[str]:
    """Drive the lifespan protocol: startup, ``await between()``, shutdown."""
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    outgoing: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, incoming.get, outgoing.put)
    )
    await incoming.put({"type": "lifespan.startup"})
    replies = [(await asyncio.wait_for(outgoing.get(), 10))["type"]]
    await between()
    await incoming.put({"type": "lifespan.shutdown"})
    replies.append((await asyncio.wait_for(outgoing.get(), 10))["type"])
    await asyncio.wait_for(task, 10)
    return replies
