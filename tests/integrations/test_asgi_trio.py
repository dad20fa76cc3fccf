"""async_orm.asgi's middleware in a Starlette app on AnyIO's asyncio and Trio
backends, and served for real by Hypercorn's Trio worker."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import async_orm
from async_orm.asgi import AsyncSessionMiddleware, current_session
from tests.models import Base, User

trio = pytest.importorskip("trio")

Url = tuple[str, dict[str, Any]]


def _app(maker: async_orm.async_sessionmaker[async_orm.AsyncSession]) -> Starlette:
    async def add(request: Request) -> JSONResponse:
        session = current_session()
        user = User(name=request.path_params["name"])
        session.add(user)
        await session.flush()
        return JSONResponse({"id": user.id})

    async def count(request: Request) -> JSONResponse:
        users = (await current_session().scalars(User.__table__.select())).all()
        return JSONResponse({"users": len(users)})

    return Starlette(
        routes=[Route("/add/{name}", add, methods=["POST"]), Route("/count", count)],
        middleware=[Middleware(AsyncSessionMiddleware, sessions=maker)],
    )


async def _engine(db_url: Url) -> async_orm.AsyncEngine:
    url, kw = db_url
    engine = async_orm.create_async_engine(url, **kw)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_starlette_app_commits_request_sessions_on_both_backends(
    db_url: Url, anyio_backend: str
) -> None:
    async def main() -> None:
        engine = await _engine(db_url)
        app = _app(async_orm.async_sessionmaker(engine, expire_on_commit=False))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            async with anyio.create_task_group() as tg:
                for name in ("ada", "bob", "cy"):
                    tg.start_soon(client.post, f"/add/{name}")
            assert (await client.get("/count")).json() == {"users": 3}
        await engine.dispose()

    anyio.run(main, backend=anyio_backend)


def test_served_by_hypercorn_trio_worker(db_url: Url) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        engine = await _engine(db_url)
        app = _app(async_orm.async_sessionmaker(engine, expire_on_commit=False))
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            started = await nursery.start(_serve, serve, app, config, shutdown)
            assert started
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for name in ("ada", "bob"):
                    assert (await client.post(f"/add/{name}")).status_code == 200
                assert (await client.get("/count")).json() == {"users": 2}
            shutdown.set()
        await engine.dispose()

    trio.run(main)


async def _serve(
    serve: Any, app: Any, config: Any, shutdown: Any, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
