"""async_orm in a Django project, through Django's AsyncClient and the
request-scoped session of ``async_orm.django.AsyncSessionMiddleware``."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import AsyncIterator
from typing import Any

import django
import httpx
import pytest
import sqlalchemy as sa
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient, Client
from sqlalchemy import select

import async_orm
from async_orm import django as async_orm_django
from async_orm.asgi import AsyncSessionMiddleware
from tests.integrations.asgi_apps import CloseGate, run_lifespan
from tests.integrations.conftest import assert_nothing_leaked
from tests.integrations.django_project import views
from tests.integrations.rendezvous import Rendezvous
from tests.models import User


async def names(engine: async_orm.AsyncEngine) -> list[str]:
    """The committed user names, read through a session of its own."""
    async with async_orm.AsyncSession(engine) as session:
        return list((await session.scalars(select(User.name).order_by(User.id))).all())


async def test_crud_through_async_views(django_engine: async_orm.AsyncEngine) -> None:
    client = AsyncClient()
    created = await client.post("/users/", {"name": "ann"}, content_type="application/json")
    assert created.status_code == 201
    user_id = created.json()["id"]
    assert await names(django_engine) == ["ann"]

    listed = await client.get("/users/")
    assert listed.json() == {"users": [{"id": user_id, "name": "ann"}]}

    renamed = await client.put(
        f"/users/{user_id}/", {"name": "anna"}, content_type="application/json"
    )
    assert renamed.json() == {"id": user_id, "name": "anna"}
    assert await names(django_engine) == ["anna"]

    deleted = await client.delete(f"/users/{user_id}/")
    assert deleted.status_code == 204
    assert await names(django_engine) == []
    assert (await client.get(f"/users/{user_id}/")).status_code == 404
    assert_nothing_leaked(django_engine)


async def test_exception_in_async_view_rolls_back(django_engine: async_orm.AsyncEngine) -> None:
    client = AsyncClient(raise_request_exception=False)
    response = await client.get("/fail-after-write/")
    assert response.status_code == 500
    assert await names(django_engine) == []
    assert_nothing_leaked(django_engine)


async def test_exception_is_reraised_by_test_client_and_nothing_is_committed(
    django_engine: async_orm.AsyncEngine,
) -> None:
    with pytest.raises(RuntimeError, match="failed after writing"):
        await AsyncClient().get("/fail-after-write/")
    assert await names(django_engine) == []
    assert_nothing_leaked(django_engine)


async def test_failing_commit_becomes_a_500(django_engine: async_orm.AsyncEngine) -> None:
    """The middleware commits before returning the response, so a commit that
    fails (a unique constraint) is a 500, not a success."""
    response = await AsyncClient(raise_request_exception=False).post("/duplicate/")
    assert response.status_code == 500
    assert await names(django_engine) == []
    assert_nothing_leaked(django_engine)


async def test_error_status_rolls_back(django_engine: async_orm.AsyncEngine) -> None:
    response = await AsyncClient().get("/conflict-after-write/")
    assert response.status_code == 409
    assert await names(django_engine) == []
    assert_nothing_leaked(django_engine)


async def test_autocommit_setting_off_leaves_commit_to_the_view(
    django_engine: async_orm.AsyncEngine, settings: Any
) -> None:
    settings.ASYNC_ORM_AUTOCOMMIT = False
    response = await AsyncClient().post(
        "/users/", {"name": "uncommitted"}, content_type="application/json"
    )
    assert response.status_code == 201
    assert await names(django_engine) == []
    assert_nothing_leaked(django_engine)


async def test_autocommit_setting_may_be_a_rule_taking_the_status(
    django_engine: async_orm.AsyncEngine, settings: Any
) -> None:
    statuses: list[int] = []

    def only_created(status: int) -> bool:
        statuses.append(status)
        return status == 201

    settings.ASYNC_ORM_AUTOCOMMIT = only_created
    client = AsyncClient()
    await client.post("/users/", {"name": "kept"}, content_type="application/json")
    assert (await client.get("/conflict-after-write/")).status_code == 409
    assert statuses == [201, 409]
    assert await names(django_engine) == ["kept"]
    assert_nothing_leaked(django_engine)


async def test_concurrent_requests_get_distinct_sessions_on_distinct_threads(
    django_engine: async_orm.AsyncEngine,
) -> None:
    n = 4
    views.barrier = Rendezvous(n)
    try:
        client = AsyncClient()
        responses = await asyncio.wait_for(
            asyncio.gather(*(client.get("/session-info/") for _ in range(n))), timeout=30
        )
    finally:
        views.barrier = None
    infos = [r.json() for r in responses]
    assert all(info["same_session_again"] for info in infos)
    assert len({info["session"] for info in infos}) == n
    assert len({info["thread"] for info in infos}) == n
    assert not {info["thread"] for info in infos} & {info["loop_thread"] for info in infos}
    assert_nothing_leaked(django_engine)


async def test_sync_and_async_views_share_one_engine(
    django_engine: async_orm.AsyncEngine,
) -> None:
    client = AsyncClient()
    created = await client.post("/sync/users/", {"name": "bob"}, content_type="application/json")
    assert created.status_code == 201
    async_view = await client.get("/engine-id/")
    assert created.json()["engine"] == async_view.json()["engine"] == id(django_engine.sync_engine)
    # written by the sync view, read by the async one, and the other way round
    assert (await client.get("/users/")).json()["users"] == [
        {"id": created.json()["id"], "name": "bob"}
    ]
    await client.post("/users/", {"name": "carol"}, content_type="application/json")
    assert await names(django_engine) == ["bob", "carol"]
    assert_nothing_leaked(django_engine)


async def test_sync_view_writes_through_the_request_session(
    django_engine: async_orm.AsyncEngine,
) -> None:
    client = AsyncClient()
    ok = await client.post(
        "/sync/request-session/", {"name": "dave"}, content_type="application/json"
    )
    assert ok.status_code == 201
    rejected = await client.post(
        "/sync/request-session/", {"name": "fail-eve"}, content_type="application/json"
    )
    assert rejected.status_code == 400
    assert await names(django_engine) == ["dave"]
    assert_nothing_leaked(django_engine)


async def test_sync_helper_through_sync_to_async_sees_the_views_session(
    django_engine: async_orm.AsyncEngine,
) -> None:
    response = await AsyncClient().post("/async-calls-sync/")
    assert response.status_code == 201
    body = response.json()
    assert body["helper_session"] == body["async_session"]
    assert body["helper_thread"] != body["loop_thread"]
    # the helper's write is in the view's transaction, and both are committed
    assert body["names_in_transaction"] == ["from-async", "from-sync-helper"]
    assert await names(django_engine) == ["from-async", "from-sync-helper"]
    assert_nothing_leaked(django_engine)


def test_sync_client_runs_the_middleware_sync_path(django_engine: async_orm.AsyncEngine) -> None:
    """Under WSGI (Django's sync Client) the middleware runs sync: async views
    run through async_to_sync, the sessions end through async_to_sync too."""
    client = Client()
    created = client.post("/users/", {"name": "wsgi"}, content_type="application/json")
    assert created.status_code == 201
    assert client.post("/sync/users/", {"name": "wsgi-sync"}, content_type="application/json")
    assert client.get("/conflict-after-write/").status_code == 409
    assert async_to_sync(names)(django_engine) == ["wsgi", "wsgi-sync"]
    assert_nothing_leaked(django_engine)


async def test_session_scope_outside_a_request(django_engine: async_orm.AsyncEngine) -> None:
    def sync_part() -> int:
        return id(async_orm_django.current_session())

    async with async_orm_django.session_scope() as session:
        assert async_orm_django.current_session() is session
        assert await sync_to_async(sync_part)() == id(session)
        session.add(User(name="job"))
    with pytest.raises(ValueError, match="boom"):
        async with async_orm_django.session_scope() as session:
            session.add(User(name="failed-job"))
            await session.flush()
            raise ValueError("boom")
    assert await names(django_engine) == ["job"]
    assert_nothing_leaked(django_engine)


async def test_engine_and_sessionmaker_come_from_settings(
    django_engine: async_orm.AsyncEngine, db_url: tuple[str, dict[str, Any]]
) -> None:
    assert async_orm_django.get_engine() is django_engine
    assert django_engine.sync_engine.url == sa.make_url(db_url[0])
    maker = async_orm_django.get_sessionmaker()
    assert maker.kw["bind"] is django_engine
    assert maker.kw["expire_on_commit"] is False
    async with maker() as session:
        assert await session.scalar(select(sa.func.count()).select_from(User)) == 0


def test_engine_options_from_django_databases() -> None:
    url, kwargs = async_orm_django.engine_options_from_django(
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "app",
            "USER": "web",
            "PASSWORD": "s3cret",
            "HOST": "db.internal",
            "PORT": "5433",
            "OPTIONS": {"sslmode": "require", "pool": True},
        }
    )
    assert url.render_as_string(hide_password=False) == (
        "postgresql+psycopg://web:s3cret@db.internal:5433/app"
    )
    assert kwargs == {"connect_args": {"sslmode": "require"}}
    url, kwargs = async_orm_django.engine_options_from_django(
        {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/db.sqlite3"}
    )
    assert str(url) == "sqlite:////srv/db.sqlite3" and kwargs == {}
    url, _ = async_orm_django.engine_options_from_django(
        {"ENGINE": "django.db.backends.mysql", "NAME": "app", "USER": "root", "HOST": "h"}
    )
    assert str(url) == "mysql+pymysql://root@h/app"
    with pytest.raises(ValueError, match="ASYNC_ORM_DATABASES"):
        async_orm_django.engine_options_from_django({"ENGINE": "django.db.backends.oracle"})


async def test_engine_from_django_databases_setting(
    db_url: tuple[str, dict[str, Any]], settings: Any, backend: str
) -> None:
    """Without ASYNC_ORM_DATABASES, DATABASES[alias] is translated."""
    url = sa.make_url(db_url[0])
    django_db: dict[str, Any]
    if backend == "sqlite":
        django_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": url.database}
    else:
        django_db = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.database,
            "USER": url.username,
            "HOST": url.host,
            "PORT": url.port,
            "OPTIONS": db_url[1]["connect_args"],
        }
    settings.ASYNC_ORM_DATABASES = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
        settings.DATABASES = {"reports": django_db}
    try:
        engine = async_orm_django.get_engine("reports")
        assert engine.dialect.name == backend
        async with async_orm_django.session_scope("reports") as session:
            assert await session.scalar(select(sa.literal(1))) == 1
        assert_nothing_leaked(engine)
    finally:
        await async_orm_django.dispose_engines()


def test_sync_thread_without_a_request_gets_a_stable_scope() -> None:
    """Plain sync code (no request, no asgiref hop) is keyed per thread."""
    seen: list[Any] = []

    def key() -> None:
        from async_orm.scopes import local_scope

        seen.append((local_scope(), local_scope()))

    for _ in range(2):
        thread = threading.Thread(target=key)
        thread.start()
        thread.join()
    (a1, a2), (b1, b2) = seen
    assert a1 is a2 and b1 is b2 and a1 is not b1


async def test_django_asgi_app_wrapped_in_the_asgi_middleware_disposes_at_shutdown(
    django_engine: async_orm.AsyncEngine,
) -> None:
    """The recipe of the Django guide: Django's ASGI handler does not speak the
    lifespan protocol; the ASGI middleware speaks it and disposes the engine."""
    from django.core.asgi import get_asgi_application

    app = AsyncSessionMiddleware(
        get_asgi_application(), async_orm_django.get_scoped_session(), websockets=False
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        created = await client.post("/users/", json={"name": "via-asgi"})
        assert created.status_code == 201, created.text
        assert (await client.get("/conflict-after-write/")).status_code == 409
    assert await names(django_engine) == ["via-asgi"]
    first_pool = django_engine.sync_engine.pool

    async def nothing() -> None:
        pass

    replies = await run_lifespan(app, nothing)
    assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert django_engine.sync_engine.pool is not first_pool
    assert first_pool.checkedin() == 0  # type: ignore[attr-defined]
    assert_nothing_leaked(django_engine)


# -- the request-session policy, with two databases --------------------------------------


@pytest.fixture
async def two_engines(
    db_url: tuple[str, dict[str, Any]],
    second_db_url: tuple[str, dict[str, Any]],
    settings: Any,
) -> AsyncIterator[tuple[async_orm.AsyncEngine, async_orm.AsyncEngine]]:
    """``default`` and ``other`` in ``ASYNC_ORM_DATABASES``, each with the test
    tables; at the end nothing may be checked out of either."""
    from tests.models import Base

    settings.ASYNC_ORM_DATABASES = {
        alias: {"URL": url, "ENGINE_OPTIONS": {"pool_size": 5, "max_overflow": 5, **kwargs}}
        for alias, (url, kwargs) in {"default": db_url, "other": second_db_url}.items()
    }
    engines = (async_orm_django.get_engine(), async_orm_django.get_engine("other"))
    for engine in engines:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    yield engines
    checked_out = [engine.pool.checkedout() for engine in engines]  # type: ignore[attr-defined]
    await async_orm_django.dispose_engines()
    assert checked_out == [0, 0], f"connections still checked out at teardown: {checked_out}"


async def test_every_database_of_a_successful_request_is_committed(
    two_engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine],
) -> None:
    default, other = two_engines
    response = await AsyncClient().post("/two-databases/?outcome=ok")
    assert response.status_code == 201
    assert await names(default) == ["in-default"]
    assert await names(other) == ["in-other"]
    assert_nothing_leaked(default)
    assert_nothing_leaked(other)


@pytest.mark.parametrize(
    "outcome",
    [
        "duplicate",  # the first database's commit fails: the one after it is not committed
        "raise",  # the view raises after writing to both: neither is committed
    ],
)
async def test_a_failing_commit_or_view_commits_no_database_and_is_a_500(
    two_engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine], outcome: str
) -> None:
    default, other = two_engines
    response = await AsyncClient(raise_request_exception=False).post(
        f"/two-databases/?outcome={outcome}"
    )
    assert response.status_code == 500
    assert await names(default) == []
    assert await names(other) == []
    assert_nothing_leaked(default)
    assert_nothing_leaked(other)


async def test_request_cancelled_while_closing_still_closes_every_database(
    two_engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine],
) -> None:
    """The cancellation arrives while the first session closes: that close is
    finished, the second session is closed too, then the CancelledError ends the
    request."""
    default, other = two_engines
    gate = CloseGate(default.sync_engine)
    try:
        client = AsyncClient(raise_request_exception=False)
        await gate.cancel_while_held(
            asyncio.create_task(client.post("/two-databases/?outcome=raise"))
        )
    finally:
        gate.remove()
    assert_nothing_leaked(default)
    assert_nothing_leaked(other)
    assert await names(default) == []
    assert await names(other) == []


@pytest.mark.skipif(
    django.VERSION < (5, 0), reason="Django cancels a view on disconnect from 5.0 on"
)
async def test_client_going_away_cancels_the_view_and_commits_nothing(
    django_engine: async_orm.AsyncEngine,
) -> None:
    """Under Django's ASGI handler, a client that disconnects cancels the view;
    the middleware closes the session, committing nothing."""
    from django.core.asgi import get_asgi_application

    views.entered = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        assert views.entered is not None
        await views.entered.wait()  # the view wrote and is waiting
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/wait-for-disconnect/",
        "raw_path": b"/wait-for-disconnect/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    try:
        await asyncio.wait_for(get_asgi_application()(scope, receive, send), timeout=10)
    finally:
        views.entered = None
    assert not any(message["type"] == "http.response.start" for message in sent)
    assert await names(django_engine) == []
    assert_nothing_leaked(django_engine)
