"""One test body, run under asyncio and under Trio, on SQLite and on PostgreSQL.

Every test in this package is a plain (sync) function that takes ``run`` and hands
it an ``async def body(engine)`` written with AnyIO's primitives; ``run`` starts
``anyio.run(main, backend=...)`` for the test's event-loop library.  The tests are
sync on purpose: pytest-asyncio's auto mode takes every ``async def`` test and
fixture of the project, so async tests here would be run by it on asyncio only.

The ``async_library`` fixture (``asyncio``, ``trio``) and the shared ``backend`` /
``db_url`` fixtures of ``tests/conftest.py`` (SQLite file, PostgreSQL with a schema
per test) give four runs of each test: ``test_x[asyncio-sqlite]`` ...
``test_x[trio-postgresql]``.  ``run`` checks inside the run that the library really
is the one asked for (``sniffio.current_async_library()``), before and after the
body, and that the body ran to its end; at the end it disposes of the engine and
fails if a connection was still checked out (``dispose_checking_leaks``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import sniffio
import sqlalchemy as sa
from sqlalchemy import event, text

import async_orm
from tests.conftest import dispose_checking_leaks
from tests.models import Base
from tests.test_cancellation import SLOW  # a statement that runs until interrupted

Body = Callable[[async_orm.AsyncEngine], Awaitable[None]]

LIBRARIES = ["asyncio", "trio"]


class LoopRun:
    """``run(body, **engine_kwargs)``: ``anyio.run`` the body under this test's
    event-loop library with an engine holding the test tables."""

    def __init__(self, library: str, backend: str, db_url: tuple[str, dict[str, Any]]) -> None:
        self.library = library
        self.backend = backend
        self.url, self.url_kwargs = db_url

    def __call__(self, body: Body, **engine_kwargs: Any) -> None:
        finished: list[str] = []

        async def main() -> None:
            assert sniffio.current_async_library() == self.library
            kwargs = {"pool_size": 5, "max_overflow": 5, **self.url_kwargs, **engine_kwargs}
            engine = async_orm.create_async_engine(self.url, **kwargs)
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                await body(engine)
            except BaseException:
                await engine.dispose()  # the body's own error is the one to report
                raise
            await dispose_checking_leaks([engine])
            finished.append(sniffio.current_async_library())

        anyio.run(main, backend=self.library)
        assert finished == [self.library], "the test body did not run to its end"

    def make_engine(self, **engine_kwargs: Any) -> async_orm.AsyncEngine:
        """Another engine on this test's database (the caller disposes of it)."""
        return async_orm.create_async_engine(self.url, **{**self.url_kwargs, **engine_kwargs})

    @property
    def slow(self) -> str:
        """A statement that runs until interrupted, on this backend."""
        return SLOW[self.backend]


@pytest.fixture(params=LIBRARIES)
def async_library(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(async_library: str, backend: str, db_url: tuple[str, dict[str, Any]]) -> LoopRun:
    return LoopRun(async_library, backend, db_url)


class StatementStarted:
    """Set (from the worker thread) when a statement containing ``marker`` starts;
    awaited on either library through AnyIO's thread pool, bounded.  (The one of
    ``tests/test_cancellation.py`` sets an ``asyncio.Event``, so serves asyncio only.)"""

    def __init__(self, engine: async_orm.AsyncEngine, marker: str) -> None:
        self.started = threading.Event()
        self.marker = marker
        self.threads: list[int] = []
        self._engine = engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._check)

    def _check(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.marker in statement:
            self.threads.append(threading.get_ident())
            self.started.set()

    async def wait(self, timeout: float = 10.0) -> None:
        started = await anyio.to_thread.run_sync(self.started.wait, timeout)
        assert started, f"no statement containing {self.marker!r} started within {timeout} s"

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._check)


async def wait_until_not_active(run: LoopRun, pid: int, since: float, within: float = 1.0) -> str:
    """PostgreSQL: poll (there is no event for it) until backend ``pid`` no longer
    runs a statement; fail if it still does ``within`` seconds after ``since`` (a
    ``time.monotonic()``).  Returns its state then."""
    admin = run.make_engine(poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            deadline = since + within
            while True:
                state = await conn.scalar(
                    text("select state from pg_stat_activity where pid = :pid"), {"pid": pid}
                )
                if state != "active":
                    return str(state)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"backend {pid} still 'active' in pg_stat_activity {within} s after "
                        "the cancellation: the statement was not interrupted at the server"
                    )
                await anyio.sleep(0.02)
    finally:
        await admin.dispose()
