"""Security: a URL's password never shows, and context never leaks between sessions.

1. The password of the URL appears in no repr, no log line and no error message
   that async_orm produces or passes on: engines, sessions, connections,
   transactions, results, makers; async-driver URL errors, worker-slot timeouts,
   statement errors, connection failures (also a failed password login against
   a server with password authentication).
2. Context variables set inside one session's calls never leak into another
   session that later reuses the same pooled worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

import async_orm
from async_orm import _worker, exc
from tests.reliability._support import Row, private_pg_url
from tests.reliability.conftest import EngineFactory

pytestmark = pytest.mark.reliability

PASSWORD = "s3cr3t-PW"


def with_password(url: str) -> str:
    """The URL with user ``postgres`` and PASSWORD (the shared test server trusts
    every local login, so the password is carried but not checked)."""
    return (
        make_url(url)
        .set(username="postgres", password=PASSWORD)
        .render_as_string(hide_password=False)
    )


def everything_said(error: BaseException) -> str:
    """str, repr and the formatted traceback, with causes and contexts."""
    return "\n".join(
        [str(error), repr(error), *traceback.format_exception(error)]
        + [repr(arg) for arg in error.args]
    )


def assert_hidden(text_: str, where: str) -> None:
    assert PASSWORD not in text_, f"the URL's password appears in {where}: {text_[:500]}"


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # every logger: sqlalchemy.*, async_orm.*, psycopg
    yield caplog


def assert_logs_hidden(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for record in caplog.records:
        assert_hidden(record.getMessage(), f"log line of {record.name}")
        if record.exc_info and record.exc_info[1] is not None:
            assert_hidden(everything_said(record.exc_info[1]), f"logged error of {record.name}")


# --------------------------------------------------------------------------
# 1. the password


async def test_password_hidden_in_reprs_and_logs_of_a_working_engine(
    pg_only_url: tuple[str, dict[str, Any]], all_logs: pytest.LogCaptureFixture
) -> None:
    url, kw = pg_only_url
    engine = async_orm.create_async_engine(
        with_password(url), echo="debug", echo_pool="debug", pool_size=2, max_overflow=0, **kw
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Row.metadata.create_all)
        maker = async_orm.async_sessionmaker(engine)
        shown: dict[str, Any] = {
            "engine": engine,
            "engine.url": engine.url,
            "engine.sync_engine": engine.sync_engine,
            "engine.pool": engine.pool,
            "maker": maker,
        }
        async with maker() as session:
            session.add(Row(request=1))
            await session.flush()
            result = await session.execute(select(Row))
            conn = await session.connection()
            shown |= {
                "session": session,
                "session.bind": session.bind,
                "result": result,
                "connection": conn,
                "transaction": session.get_transaction(),
                "sync_session": session.sync_session,
            }
            async with session.begin_nested() as nested:
                shown["nested transaction"] = nested
            await session.commit()
        async with engine.connect() as conn:
            stream = await conn.stream(select(Row))
            shown |= {"AsyncConnection": conn, "AsyncResult": stream}
            await stream.close()
        for name, obj in shown.items():
            assert_hidden(repr(obj), f"repr({name})")
            assert_hidden(str(obj), f"str({name})")
        assert "***" in repr(engine)
    finally:
        await engine.dispose()
    assert_logs_hidden(all_logs)


async def test_password_hidden_in_error_messages(
    pg_only_url: tuple[str, dict[str, Any]], all_logs: pytest.LogCaptureFixture
) -> None:
    url, kw = pg_only_url
    secret_url = with_password(url)
    errors: dict[str, BaseException] = {}

    # an async driver's URL
    for driver in ("asyncpg", "psycopg_async"):
        async_url = make_url(secret_url).set(drivername=f"postgresql+{driver}")
        with pytest.raises(exc.AsyncDriverURLError) as caught:
            async_orm.create_async_engine(async_url.render_as_string(hide_password=False))
        errors[f"async driver {driver}"] = caught.value

    engine = async_orm.create_async_engine(
        secret_url, pool_size=1, max_overflow=0, worker_timeout=0.2, echo=True, **kw
    )
    try:
        # every worker slot held: the next session times out
        async with async_orm.AsyncSession(engine) as holder:
            await holder.execute(text("select 1"))
            with pytest.raises(exc.WorkerSlotTimeout) as caught_timeout:
                async with async_orm.AsyncSession(engine) as waiter:
                    await waiter.execute(text("select 1"))
            errors["worker slot timeout"] = caught_timeout.value
            assert "***" in str(caught_timeout.value)

            # a statement error, with its SQL and parameters
            with pytest.raises(sa_exc.ProgrammingError) as caught_sql:
                await holder.execute(text("select * from no_such_table where x = :x"), {"x": 1})
            errors["statement error"] = caught_sql.value
            await holder.rollback()
    finally:
        await engine.dispose()

    # a server that is not there
    down = make_url(secret_url).set(host="127.0.0.1", port=1).render_as_string(False)
    engine = async_orm.create_async_engine(down)
    try:
        with pytest.raises(sa_exc.OperationalError) as caught_down:
            async with async_orm.AsyncSession(engine) as session:
                await session.execute(text("select 1"))
        errors["connection refused"] = caught_down.value
    finally:
        await engine.dispose()

    for name, error in errors.items():
        assert_hidden(everything_said(error), f"the error for {name}")
    assert_logs_hidden(all_logs)


async def test_password_hidden_when_login_fails_with_a_wrong_password(
    private_pg: PostgreSQLExecutor, all_logs: pytest.LogCaptureFixture
) -> None:
    """Against the private server, which checks passwords."""
    engine = async_orm.create_async_engine(
        private_pg_url(private_pg, password=PASSWORD), echo=True, echo_pool="debug"
    )
    try:
        with pytest.raises(sa_exc.OperationalError) as caught:
            async with async_orm.AsyncSession(engine) as session:
                await session.execute(text("select 1"))
        assert "password authentication failed" in str(caught.value)
        assert_hidden(everything_said(caught.value), "the failed login's error")
        assert_hidden(repr(engine), "repr(engine)")
    finally:
        await engine.dispose()
    assert_logs_hidden(all_logs)


def test_password_hidden_in_errors_for_bad_urls() -> None:
    for url in (
        f"postgresql+nosuchdriver://postgres:{PASSWORD}@h/d",
        f"postgresql+psycopg://postgres:{PASSWORD}@h:notaport/d",
        f"sqlite+aiosqlite://postgres:{PASSWORD}@/x.db",
    ):
        with pytest.raises(Exception) as caught:  # each URL fails with its own type
            async_orm.create_async_engine(url)
        assert_hidden(everything_said(caught.value), f"the error for {url.split(':')[0]}")


# --------------------------------------------------------------------------
# 2. context variables and reused worker threads

leaky: contextvars.ContextVar[str] = contextvars.ContextVar("leaky")


@pytest.fixture
def one_idle_worker() -> Iterator[None]:
    """At most one idle worker, so a session closed and the next one opened run
    on the same thread."""
    previous = _worker.pool.max_idle
    _worker.pool.shrink()
    _worker.pool.configure(max_idle=1)
    yield
    _worker.pool.configure(max_idle=previous)


async def test_context_variables_do_not_leak_to_the_next_session_on_a_reused_worker(
    make_engine: EngineFactory, one_idle_worker: None
) -> None:
    engine = await make_engine(pool_size=1, max_overflow=0)
    maker = async_orm.async_sessionmaker(engine)

    def thread_of(_: Any) -> tuple[int, str]:
        return threading.get_ident(), threading.current_thread().name

    def set_inside(_: Any, value: str) -> str:
        leaky.set(value)  # set on the worker, inside the call, and never reset
        return leaky.get()

    def read_inside(_: Any) -> str | None:
        return leaky.get(None)

    async def first_session() -> tuple[int, str]:
        leaky.set("first-session-task")
        async with maker() as session:
            where = await session.run_sync(thread_of)
            assert await session.run_sync(read_inside) == "first-session-task"  # copied in
            assert await session.run_sync(set_inside, "set-on-worker") == "set-on-worker"
            await session.execute(select(Row))
            # a call's own changes stay in that call
            assert await session.run_sync(read_inside) == "first-session-task"
        return where

    async def second_session() -> tuple[tuple[int, str], str | None, str | None]:
        async with maker() as session:
            where = await session.run_sync(thread_of)
            seen = await session.run_sync(read_inside)
            conn = await session.connection()
            seen_conn = await conn.run_sync(lambda _: leaky.get(None))
        return where, seen, seen_conn

    first_thread = await asyncio.create_task(first_session())
    second_thread, seen, seen_conn = await asyncio.create_task(second_session())
    assert second_thread == first_thread, (
        "the worker thread was not reused: the test proves nothing"
    )
    assert seen is None, f"the second session saw {seen!r}, set by the first"
    assert seen_conn is None
    # and the thread's own context (outside any call) was never touched
    assert await asyncio.to_thread(lambda: leaky.get(None)) is None


async def test_context_of_a_connection_does_not_leak_to_the_next_on_a_reused_worker(
    make_engine: EngineFactory, one_idle_worker: None
) -> None:
    engine = await make_engine(pool_size=1, max_overflow=0)

    async def first() -> int:
        leaky.set("first-connection")
        async with engine.connect() as conn:
            await conn.run_sync(lambda _: leaky.set("inside-first"))
            return await conn.run_sync(lambda _: threading.get_ident())

    async def second() -> tuple[int, str | None]:
        async with engine.connect() as conn:
            ident = await conn.run_sync(lambda _: threading.get_ident())
            return ident, await conn.run_sync(lambda _: leaky.get(None))

    first_ident = await asyncio.create_task(first())
    second_ident, seen = await asyncio.create_task(second())
    assert second_ident == first_ident
    assert seen is None


async def test_event_listener_context_does_not_leak_between_sessions(
    make_engine: EngineFactory, one_idle_worker: None
) -> None:
    """Engine events run in the caller's copied context too: what one request
    sets there is invisible to the next request on the same thread."""
    engine = await make_engine(pool_size=1, max_overflow=0)
    maker = async_orm.async_sessionmaker(engine)
    seen: list[tuple[str | None, int]] = []

    @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append((leaky.get(None), threading.get_ident()))
        leaky.set("set-by-listener")

    async def request(name: str | None) -> None:
        if name is not None:
            leaky.set(name)
        async with maker() as session:
            await session.execute(text("select 1"))

    await asyncio.create_task(request("request-1"))
    await asyncio.create_task(request(None))
    assert [value for value, _ in seen] == ["request-1", None]
    assert len({ident for _, ident in seen}) == 1
