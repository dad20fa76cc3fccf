"""The ASGI middleware through real Starlette and FastAPI applications, over
httpx's ASGI transport (and raw ASGI where the client must misbehave)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import async_orm
from async_orm import AsyncSession, async_scoped_session, async_sessionmaker
from async_orm.asgi import AsyncSessionMiddleware, Message, Scope, current_session
from async_orm.scopes import context_scope
from tests.integrations.asgi_apps import (
    CloseGate,
    Hooks,
    build_fastapi,
    build_starlette,
    run_lifespan,
)
from tests.integrations.conftest import assert_nothing_leaked
from tests.integrations.rendezvous import Rendezvous
from tests.models import User

AppFactory = Callable[..., Any]


@pytest.fixture(params=["starlette", "fastapi"])
def build_app(request: pytest.FixtureRequest) -> AppFactory:
    return build_starlette if request.param == "starlette" else build_fastapi


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    hooks = Hooks()
    yield hooks
    hooks.release.set()  # never leave a worker blocked


@pytest.fixture
def scoped(engine: async_orm.AsyncEngine) -> async_scoped_session[AsyncSession]:
    return async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False), scopefunc=context_scope
    )


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def names(engine: async_orm.AsyncEngine) -> list[str]:
    """The committed user names, read through a session of its own."""
    async with AsyncSession(engine) as session:
        return list((await session.scalars(select(User.name).order_by(User.id))).all())


async def test_crud_commits_each_successful_request(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    async with client_for(build_app(scoped, hooks)) as client:
        created = await client.post("/users", json={"name": "ann"})
        assert created.status_code == 201, created.text
        pk = created.json()["id"]
        assert await names(engine) == ["ann"]
        assert (await client.get("/users")).json() == [{"id": pk, "name": "ann"}]
        assert (await client.get(f"/users/{pk}")).json() == {"id": pk, "name": "ann"}
        renamed = await client.put(f"/users/{pk}", json={"name": "anna"})
        assert renamed.json() == {"id": pk, "name": "anna"}
        assert await names(engine) == ["anna"]
        assert (await client.delete(f"/users/{pk}")).status_code == 204
        assert await names(engine) == []
        assert (await client.get(f"/users/{pk}")).status_code == 404
    assert_nothing_leaked(engine)


async def test_failing_handler_leaves_nothing_committed(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    async with client_for(build_app(scoped, hooks)) as client:
        response = await client.post("/fail")
    assert response.status_code == 500
    assert await names(engine) == []
    assert_nothing_leaked(engine)


async def test_failing_commit_turns_the_response_into_a_500(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    """The commit runs before the status line goes out, so a commit that fails
    (here on a unique constraint) is never reported as a success."""
    async with client_for(build_app(scoped, hooks)) as client:
        response = await client.post("/duplicate")
    assert response.status_code == 500
    assert await names(engine) == []
    assert_nothing_leaked(engine)


async def test_error_status_rolls_back(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    async with client_for(build_app(scoped, hooks)) as client:
        assert (await client.post("/conflict")).status_code == 409
    assert await names(engine) == []
    assert_nothing_leaked(engine)


async def test_commit_policy_is_configurable(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    # only 2xx commits: a 303 rolls back
    async with client_for(build_app(scoped, hooks, commit_on=lambda s: s < 300)) as client:
        assert (await client.post("/redirect")).status_code == 303
    assert await names(engine) == []
    # never commit: only what the handler commits itself is kept
    async with client_for(build_app(scoped, hooks, commit_on=None)) as client:
        assert (await client.post("/explicit-commit")).status_code == 201
        assert (await client.post("/users", json={"name": "dropped"})).status_code == 201
    assert await names(engine) == ["committed-by-handler"]
    assert_nothing_leaked(engine)


async def test_concurrent_requests_get_distinct_sessions_on_distinct_threads(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    n = 4
    hooks.barrier = Rendezvous(n)
    async with client_for(build_app(scoped, hooks)) as client:
        responses = await asyncio.wait_for(
            asyncio.gather(*(client.get("/session-info") for _ in range(n))), timeout=30
        )
    infos = [r.json() for r in responses]
    assert len({info["session"] for info in infos}) == n
    threads = {info["thread"] for info in infos}
    assert len(threads) == n
    assert threading.get_ident() not in threads
    assert_nothing_leaked(engine)


async def test_one_session_per_request_across_tasks_and_thread_pool(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    async with client_for(build_app(scoped, hooks)) as client:
        response = await client.get("/shared")
    assert response.json() == {"children": True, "threadpool": True, "scoped": True}
    assert_nothing_leaked(engine)


async def test_cancelled_request_leaks_nothing(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    async with client_for(build_app(scoped, hooks)) as client:
        request = asyncio.create_task(client.post("/block"))
        await asyncio.wait_for(hooks.entered.wait(), timeout=10)
        # the handler is inside a database call on its worker thread
        request.cancel()
        hooks.release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, timeout=10)
        assert_nothing_leaked(engine)
        assert await names(engine) == []
        # the app keeps working
        assert (await client.post("/users", json={"name": "after"})).status_code == 201
    assert await names(engine) == ["after"]
    assert_nothing_leaked(engine)


async def test_request_cancelled_while_its_session_closes_ends_after_the_close(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    """The handler failed after writing, so the session is closed (rolled back); a
    cancellation that arrives while it closes does not cut the close short: the
    request ends with the CancelledError only once the connection is back."""
    gate = CloseGate(engine.sync_engine)
    try:
        async with client_for(build_app(scoped, hooks)) as client:
            await gate.cancel_while_held(asyncio.create_task(client.post("/fail")))
            assert_nothing_leaked(engine)
            assert await names(engine) == []
            assert (await client.post("/users", json={"name": "after"})).status_code == 201
    finally:
        gate.remove()
    assert await names(engine) == ["after"]
    assert_nothing_leaked(engine)


def http_scope(path: str, method: str = "GET") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


async def test_client_disconnect_during_a_streaming_response_leaks_nothing(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    """The client goes away while the body streams: Starlette cancels the body;
    what the handler did before the response started is committed, what the
    body did after is rolled back, and nothing is left checked out."""
    app = build_app(scoped, hooks)
    sent: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await hooks.entered.wait()  # the body has written and sent its first chunk
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(http_scope("/stream"), receive, send), timeout=10)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert [m.get("body") for m in sent[1:]] == [b"first chunk\n"]
    assert await names(engine) == ["before-stream"]
    assert_nothing_leaked(engine)


async def run_websocket(app: Any, text: str) -> list[Message]:
    incoming: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": text},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = http_scope("/ws")
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


async def test_websocket_gets_a_session_committed_when_it_ends(
    build_app: AppFactory,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    app = build_app(scoped, hooks)
    sent = await run_websocket(app, "wendy")
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert await names(engine) == ["wendy"]
    with pytest.raises(RuntimeError, match="websocket handler failed"):
        await run_websocket(app, "fail-walter")
    assert await names(engine) == ["wendy"]
    assert_nothing_leaked(engine)


async def bare_app(scope: Scope, receive: Any, send: Any) -> None:
    """An app that refuses the lifespan scope, as Django's ASGI handler does."""
    if scope["type"] != "http":
        raise ValueError(f"only http, not {scope['type']}")
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("kind", ["starlette", "fastapi", "bare"])
async def test_lifespan_shutdown_disposes_the_engine(
    kind: str,
    scoped: async_scoped_session[AsyncSession],
    hooks: Hooks,
    engine: async_orm.AsyncEngine,
) -> None:
    if kind == "bare":
        app: Any = AsyncSessionMiddleware(bare_app, scoped)
    else:
        app = (build_starlette if kind == "starlette" else build_fastapi)(scoped, hooks)
    first_pool = engine.sync_engine.pool

    async def between() -> None:
        assert engine.sync_engine.pool is first_pool  # same process: startup keeps the pool
        async with AsyncSession(engine) as session:  # leaves a connection in the pool
            await session.execute(select(User))
        assert first_pool.checkedin() >= 1  # type: ignore[attr-defined]

    replies = await run_lifespan(app, between)
    assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert first_pool.checkedin() == 0  # type: ignore[attr-defined]
    assert engine.sync_engine.pool is not first_pool
    assert_nothing_leaked(engine)


async def test_lifespan_startup_in_a_forked_child_drops_the_parents_pool(
    scoped: async_scoped_session[AsyncSession], engine: async_orm.AsyncEngine
) -> None:
    middleware = AsyncSessionMiddleware(bare_app, scoped)
    await engine.dispose()  # nothing pooled: dropping the pool unclosed leaks nothing here
    middleware._pid = -1  # as if this process were a child forked after the app was built
    parent_pool = engine.sync_engine.pool
    pools: list[Any] = []

    async def between() -> None:
        pools.append(engine.sync_engine.pool)

    await run_lifespan(middleware, between)
    assert pools[0] is not parent_pool
    assert_nothing_leaked(engine)


async def test_middleware_accepts_an_engine_or_a_sessionmaker(
    engine: async_orm.AsyncEngine, hooks: Hooks
) -> None:
    for sessions in (engine, engine.sync_engine, async_sessionmaker(engine)):
        middleware = AsyncSessionMiddleware(bare_app, sessions)
        assert isinstance(middleware.sessions, async_scoped_session)
        async with client_for(build_starlette(sessions, hooks)) as client:
            assert (await client.post("/users", json={"name": "x"})).status_code == 201
    assert await names(engine) == ["x", "x", "x"]
    with pytest.raises(TypeError, match="async_scoped_session"):
        AsyncSessionMiddleware(bare_app, "sqlite://")  # type: ignore[arg-type]
    assert_nothing_leaked(engine)


async def test_current_session_outside_a_request_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="AsyncSessionMiddleware"):
        current_session()


async def test_request_without_database_work_takes_no_worker(
    scoped: async_scoped_session[AsyncSession], engine: async_orm.AsyncEngine
) -> None:
    async with client_for(AsyncSessionMiddleware(bare_app, scoped)) as client:
        assert (await client.get("/")).status_code == 204
    assert scoped.registry.registry == {}
    assert_nothing_leaked(engine)
