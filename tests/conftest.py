"""Fixtures shared by every test: both backends, engines that must not leak.

Every database test runs twice: on a SQLite file and on PostgreSQL through
psycopg 3 (sync).  PostgreSQL is required when ``CI=true``; elsewhere its tests
are skipped, with the reason shown, if no server answers.  Each PostgreSQL test
gets a schema of its own, so concurrent runs do not collide.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import async_orm
from async_orm import _worker
from tests.models import Address, Base, User

PG_URL = os.environ.get(
    "ASYNC_ORM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"

_pg_status: dict[str, str | None] = {}


def postgres_unavailable() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    if "reason" not in _pg_status:
        try:
            engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            engine.dispose()
            _pg_status["reason"] = None
        except Exception as error:  # any failure to connect is a reason to skip
            _pg_status["reason"] = f"PostgreSQL at {PG_URL} is not reachable: {error}"
    return _pg_status["reason"]


def require_postgres() -> None:
    reason = postgres_unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@contextmanager
def private_pg_schema(prefix: str = "t") -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards (after ending
    the sessions the test left behind, so they cannot block the drop)."""
    require_postgres()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"create schema {schema}"))
    try:
        yield schema
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where application_name = :app and pid <> pg_backend_pid()"
                ),
                {"app": schema},
            )
            conn.execute(sa.text(f"drop schema {schema} cascade"))
        admin.dispose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards."""
    with private_pg_schema() as schema:
        yield schema


def pg_url_kwargs(schema: str) -> dict[str, Any]:
    """create_engine kwargs that put every connection in ``schema``."""
    return {"connect_args": {"options": f"-csearch_path={schema}", "application_name": schema}}


@pytest.fixture
def db_url(
    backend: str, tmp_path: Any, request: pytest.FixtureRequest
) -> tuple[str, dict[str, Any]]:
    """(url, create_engine kwargs) for this test's database on ``backend``."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}", {}
    schema = request.getfixturevalue("pg_schema")
    return PG_URL, pg_url_kwargs(schema)


@pytest.fixture
async def engine(db_url: tuple[str, dict[str, Any]]) -> AsyncIterator[async_orm.AsyncEngine]:
    """An AsyncEngine with the test models' tables; at the end, nothing may be
    checked out of its pool."""
    url, kwargs = db_url
    eng = async_orm.create_async_engine(url, pool_size=5, max_overflow=5, **kwargs)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
    await eng.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) still checked out at teardown"


async def seed_users(engine: async_orm.AsyncEngine, rows: int, digits: int) -> None:
    """Users 1..``rows`` named "u" + the id zero-padded to ``digits``; user 1 has two
    addresses (a@x, b@x)."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(User), [{"id": i, "name": f"u{i:0{digits}d}"} for i in range(1, rows + 1)]
        )
        await conn.execute(
            sa.insert(Address),
            [{"id": 1, "email": "a@x", "user_id": 1}, {"id": 2, "email": "b@x", "user_id": 1}],
        )


async def dispose_checking_leaks(engines: list[async_orm.AsyncEngine]) -> None:
    """Dispose of each engine a test made; fail if any still had a connection
    checked out (something the test left unclosed)."""
    leaks = []
    for eng in engines:
        checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
        if checked_out:
            leaks.append(f"{eng!r}: {checked_out} connection(s) still checked out")
        await eng.dispose()
    assert not leaks, "; ".join(leaks)


@pytest.fixture
def maker(engine: async_orm.AsyncEngine) -> async_orm.async_sessionmaker[async_orm.AsyncSession]:
    return async_orm.async_sessionmaker(engine, expire_on_commit=False)


class StatementThreads:
    """Records the thread of every statement an engine runs."""

    def __init__(self, sync_engine: sa.Engine) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[int, str]] = []
        self._engine = sync_engine
        event.listen(sync_engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with self.lock:
            self.records.append((threading.get_ident(), statement))

    @property
    def threads(self) -> set[int]:
        return {ident for ident, _ in self.records}

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)


@pytest.fixture
def statement_threads(engine: async_orm.AsyncEngine) -> Iterator[StatementThreads]:
    recorder = StatementThreads(engine.sync_engine)
    yield recorder
    recorder.close()


@pytest.fixture(autouse=True)
def _no_worker_leaks() -> Iterator[None]:
    """Every test must give back all the workers it took."""
    yield
    busy = _worker.pool.stats()["busy"]
    assert busy == 0, f"{busy} worker thread(s) still held by an unclosed session at teardown"
