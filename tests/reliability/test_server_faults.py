"""PostgreSQL faults: a server restart under load, a killed connection, a deadlock.

PostgreSQL only.  The restart uses a private server started by pytest-postgresql
(see conftest.py), so that stopping it disturbs nobody else; the others use the
shared server in a private schema, and fail rather than skip when CI=true and
it is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update

import async_orm
from async_orm import _worker
from tests.reliability._support import RelBase, Row, private_pg_url, rows_per_request

pytestmark = pytest.mark.reliability

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
async def pg_engine(
    pg_only_url: tuple[str, dict[str, Any]],
) -> AsyncIterator[async_orm.AsyncEngine]:
    url, kw = pg_only_url
    engine = async_orm.create_async_engine(url, pool_size=4, max_overflow=0, **kw)
    async with engine.begin() as conn:
        await conn.run_sync(RelBase.metadata.create_all)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    await engine.dispose()
    assert checked_out == 0


@pytest.fixture
async def admin(
    pg_only_url: tuple[str, dict[str, Any]],
) -> AsyncIterator[async_orm.AsyncConnection]:
    """An autocommit connection to the same server, for pg_stat_activity and
    pg_terminate_backend (its own engine: it takes none of the test's slots)."""
    url, _ = pg_only_url
    engine = async_orm.create_async_engine(
        url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    async with engine.connect() as conn:
        yield conn
    await engine.dispose()


async def wait_until(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll an async condition (a server-side state we cannot get an event for)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def backend_state(admin: async_orm.AsyncConnection, pid: int) -> tuple[str, str | None]:
    row = (
        await admin.execute(
            text("select state, wait_event_type from pg_stat_activity where pid = :pid"),
            {"pid": pid},
        )
    ).one()
    return row[0], row[1]


def is_dbapi_error(error: BaseException) -> bool:
    return isinstance(error, (sa_exc.OperationalError, sa_exc.DBAPIError))


# --------------------------------------------------------------------------
# 3. server restart in the middle of a load


async def test_server_restart_mid_load_fails_in_flight_calls_promptly_then_recovers(
    private_pg: PostgreSQLExecutor,
) -> None:
    engine = async_orm.create_async_engine(
        private_pg_url(private_pg),
        pool_size=10,
        max_overflow=0,
        pool_pre_ping=True,
        worker_timeout=120,
        connect_args={"connect_timeout": 5},
    )
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    async with engine.begin() as conn:
        await conn.run_sync(RelBase.metadata.drop_all)
        await conn.run_sync(RelBase.metadata.create_all)

    counter = iter(range(1_000_000))
    succeeded: list[int] = []
    failed: list[tuple[int, BaseException]] = []
    stop_load = asyncio.Event()

    async def request() -> BaseException | None:
        i = next(counter)
        try:
            async with maker() as session:
                session.add(Row(request=i))
                await session.commit()
        except Exception as error:
            failed.append((i, error))
            return error
        succeeded.append(i)
        return None

    async def load_loop() -> None:
        while not stop_load.is_set():
            await request()
            await asyncio.sleep(0)

    # warm the pool: ten connections to the server that is about to go away
    await asyncio.gather(*(request() for _ in range(10)))
    assert not failed and len(succeeded) == 10

    # in flight: statements that would run 30 s, plus a steady load
    async def sleeper() -> float:
        async with maker() as session:
            try:
                await session.execute(text("select pg_sleep(30) /* in-flight */"))
            except Exception as error:
                ended = time.monotonic()
                assert is_dbapi_error(error), f"expected OperationalError/DBAPIError: {error!r}"
                return ended
        raise AssertionError("pg_sleep(30) completed although the server was restarted")

    sleepers = [asyncio.create_task(sleeper()) for _ in range(4)]
    loops = [asyncio.create_task(load_loop()) for _ in range(4)]
    probe_engine = async_orm.create_async_engine(
        private_pg_url(private_pg), poolclass=sa.pool.NullPool
    )

    async def sleepers_running() -> bool:
        async with probe_engine.connect() as probe:
            n = await probe.scalar(
                text(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and query like '%in-flight%' and pid <> pg_backend_pid()"
                )
            )
        return bool(n == len(sleepers))

    await wait_until(sleepers_running, what="the in-flight statements to run")
    await probe_engine.dispose()
    before_restart = len(succeeded)

    stopped_at = time.monotonic()
    try:
        await asyncio.to_thread(private_pg.stop)
        ends = await asyncio.wait_for(asyncio.gather(*sleepers), timeout=25)
        slowest = max(ends) - stopped_at
        assert slowest < 10, f"in-flight calls took {slowest:.1f} s to fail after the stop"

        # while the server is down, new requests fail fast with a DBAPI error,
        # and failed connects give their worker slots back (more than the pool holds)
        down_started = time.monotonic()
        error = await request()
        assert error is not None, "a request succeeded with the server down"
        assert is_dbapi_error(error), repr(error)
        for _ in range(15):
            with pytest.raises(sa_exc.DBAPIError):
                async with engine.connect() as conn:
                    await conn.execute(text("select 1"))
        assert time.monotonic() - down_started < 10
    finally:
        await asyncio.to_thread(private_pg.start)
    # the load runs on for a little while against the restarted server
    after_restart = len(succeeded)
    await wait_until(
        lambda: _true_after(lambda: len(succeeded) >= after_restart + 20),
        timeout=30,
        what="the load to succeed again after the restart",
    )
    stop_load.set()
    await asyncio.gather(*loops)

    # with pool_pre_ping, every new request succeeds once the server is back
    failures_before = len(failed)
    fresh = len(succeeded)
    await asyncio.gather(*(request() for _ in range(30)))
    assert failed[failures_before:] == [], f"requests failed after the restart: {failed[-3:]}"
    assert len(succeeded) == fresh + 30

    wrong = [(i, e) for i, e in failed if not is_dbapi_error(e)]
    assert wrong == [], f"errors other than DBAPIError during the restart: {wrong[:3]!r}"
    assert before_restart > 10

    rows = await rows_per_request(engine)
    missing = [i for i in succeeded if rows.get(i) != [0]]
    assert missing == [], f"committed requests whose row is missing or doubled: {missing[:10]}"
    doubled = {i: p for i, p in rows.items() if len(p) > 1}
    assert doubled == {}
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    await engine.dispose()


async def test_pool_pre_ping_replaces_idle_connections_killed_by_a_restart(
    private_pg: PostgreSQLExecutor,
) -> None:
    """Nothing in flight this time: ten idle pooled connections die with the
    server, and nobody is told.  With pool_pre_ping=True the first requests
    after the restart detect that and reconnect, so none of them fails."""
    engine = async_orm.create_async_engine(
        private_pg_url(private_pg), pool_size=10, max_overflow=0, pool_pre_ping=True
    )
    maker = async_orm.async_sessionmaker(engine)

    async def backend_pid() -> int:
        async with maker() as session:
            pid = await session.scalar(text("select pg_backend_pid()"))
            assert isinstance(pid, int)
            return pid

    try:
        gate = asyncio.Event()

        async def hold_then_release() -> int:
            async with maker() as session:
                pid = await session.scalar(text("select pg_backend_pid()"))
                await gate.wait()  # ten sessions open at once: ten pooled connections
                assert isinstance(pid, int)
                return pid

        holders = [asyncio.create_task(hold_then_release()) for _ in range(10)]
        await wait_until(lambda: _true_after(lambda: engine.pool.checkedout() == 10))
        gate.set()
        old_pids = set(await asyncio.gather(*holders))
        assert engine.pool.checkedin() == 10  # type: ignore[attr-defined]

        try:
            await asyncio.to_thread(private_pg.stop)
        finally:
            await asyncio.to_thread(private_pg.start)

        new_pids = await asyncio.gather(*(backend_pid() for _ in range(20)))
        assert not old_pids & set(new_pids)
    finally:
        await engine.dispose()


async def _true_after(check: Any) -> bool:
    await asyncio.sleep(0)
    return bool(check())


# --------------------------------------------------------------------------
# 4. killed connection


async def test_terminated_backend_mid_transaction_gives_clear_error_and_rollback_recovers(
    pg_engine: async_orm.AsyncEngine, admin: async_orm.AsyncConnection
) -> None:
    maker = async_orm.async_sessionmaker(pg_engine)
    async with maker() as session:
        session.add(Row(request=1))
        await session.flush()
        pid = await session.scalar(text("select pg_backend_pid()"))
        assert await admin.scalar(text("select pg_terminate_backend(:pid)"), {"pid": pid})

        with pytest.raises(sa_exc.OperationalError) as caught:
            await session.execute(select(Row))
        assert caught.value.connection_invalidated, "the dead connection was not invalidated"
        message = str(caught.value).lower()
        assert "terminat" in message or "closed" in message, message

        await session.rollback()
        new_pid = await session.scalar(text("select pg_backend_pid()"))
        assert new_pid != pid
        session.add(Row(request=2))
        await session.commit()

    rows = await rows_per_request(pg_engine)
    assert rows == {2: [0]}, "the killed transaction's row must be gone, the new one kept"


async def test_terminated_backend_during_a_running_statement_fails_promptly(
    pg_engine: async_orm.AsyncEngine, admin: async_orm.AsyncConnection
) -> None:
    maker = async_orm.async_sessionmaker(pg_engine)
    async with maker() as session:
        pid = await session.scalar(text("select pg_backend_pid()"))
        running = asyncio.create_task(session.execute(text("select pg_sleep(30)")))

        async def sleeping() -> bool:
            state, _ = await backend_state(admin, pid)
            return state == "active"

        await wait_until(sleeping, what="pg_sleep to run")
        killed_at = time.monotonic()
        await admin.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(sa_exc.OperationalError):
            await running
        assert time.monotonic() - killed_at < 10

        await session.rollback()
        assert await session.scalar(text("select 1")) == 1


# --------------------------------------------------------------------------
# 5. deadlock


async def test_deadlock_reaches_one_session_and_the_other_commits(
    pg_engine: async_orm.AsyncEngine, admin: async_orm.AsyncConnection
) -> None:
    async with pg_engine.begin() as conn:
        await conn.execute(sa.insert(Row), [{"id": 1, "request": 0}, {"id": 2, "request": 0}])
    maker = async_orm.async_sessionmaker(pg_engine)
    busy_before = _worker.pool.stats()["busy"]  # the admin connection holds one
    first = maker()
    second = maker()
    try:
        pids = []
        for session in (first, second):
            # detect the deadlock quickly (superuser setting, this session only)
            await session.execute(text("set deadlock_timeout = '100ms'"))
            pids.append(await session.scalar(text("select pg_backend_pid()")))

        def mark(session_no: int, row_id: int) -> Any:
            return update(Row).where(Row.id == row_id).values(request=session_no)

        await first.execute(mark(1, 1))  # first locks row 1
        await second.execute(mark(2, 2))  # second locks row 2
        first_waits = asyncio.create_task(first.execute(mark(1, 2)))  # blocks on second

        async def first_is_blocked() -> bool:
            _, wait_type = await backend_state(admin, pids[0])
            return wait_type == "Lock"

        await wait_until(first_is_blocked, what="the first session to wait for the lock")
        second_waits = asyncio.create_task(second.execute(mark(2, 1)))  # closes the cycle

        outcomes = await asyncio.wait_for(
            asyncio.gather(first_waits, second_waits, return_exceptions=True), timeout=20
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1, f"expected exactly one deadlock error, got {outcomes!r}"
        error = errors[0]
        assert isinstance(error, sa_exc.OperationalError), repr(error)
        assert getattr(error.orig, "sqlstate", None) == "40P01", repr(error.orig)
        assert "deadlock detected" in str(error)

        victim, winner = (first, second) if outcomes[0] is error else (second, first)
        winner_no = 2 if winner is second else 1
        await winner.commit()
        await victim.rollback()
    finally:
        await first.close()
        await second.close()

    async with pg_engine.connect() as conn:
        marks = (await conn.execute(select(Row.id, Row.request).order_by(Row.id))).all()
    assert marks == [(1, winner_no), (2, winner_no)]
    assert _worker.pool.stats()["busy"] == busy_before, "a worker is stuck after the deadlock"
