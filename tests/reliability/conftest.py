"""Fixtures of the reliability tests: engines sized per test, a table whose rows
prove "exactly once" and "all or nothing", and a private PostgreSQL server that
a test may restart.

The private server is started by pytest-postgresql (``postgresql_proc``) from
the binaries under ``/usr/lib/postgresql/15/bin`` (``ASYNC_ORM_PG_BINDIR``
overrides), on 127.0.0.1 and a free port.  PostgreSQL refuses to run as root;
when the tests do (CI containers), pg_ctl runs as the ``postgres`` user, with a
temporary directory that user can reach.
"""

from __future__ import annotations

import gc
import os
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy import exc as sa_exc

import async_orm
from async_orm import _worker
from tests.conftest import IN_CI, PG_URL, dispose_checking_leaks, pg_url_kwargs
from tests.reliability._support import PRIVATE_PG_PASSWORD, RelBase

PG_BINDIR = Path(os.environ.get("ASYNC_ORM_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------
# leaks are reported by the test that made them


@pytest.fixture(autouse=True)
def _leaks_reported_here() -> Iterator[None]:
    """Collect garbage after each test: a session, connection or pooled connection
    the test left unclosed warns now, failing *this* test's teardown, instead of
    as an unraisable warning in whichever later test the collector runs."""
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    leaks = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (ResourceWarning, sa_exc.SAWarning))
    ]
    if leaks:
        # the collected sessions are closed on their workers: let them finish
        deadline = time.monotonic() + 5
        while _worker.pool.stats()["busy"] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not leaks, "this test leaked: " + "; ".join(leaks)


# --------------------------------------------------------------------------
# engines


EngineFactory = Callable[..., Awaitable[async_orm.AsyncEngine]]


@pytest.fixture
async def make_engine(
    db_url: tuple[str, dict[str, Any]],
) -> AsyncIterator[EngineFactory]:
    """``await make_engine(**create_engine_kw)``: an AsyncEngine on this test's database
    with the reliability tables; every one is checked for connections still
    checked out, then disposed, at teardown."""
    engines: list[async_orm.AsyncEngine] = []
    url, base_kw = db_url

    async def make(**kw: Any) -> async_orm.AsyncEngine:
        eng = async_orm.create_async_engine(url, **{**base_kw, **kw})
        engines.append(eng)
        async with eng.begin() as conn:
            await conn.run_sync(RelBase.metadata.create_all)
        return eng

    yield make
    await dispose_checking_leaks(engines)


@pytest.fixture
def pg_only_url(pg_schema: str) -> tuple[str, dict[str, Any]]:
    """The shared PostgreSQL server, in a private schema (fails when CI=true and
    it is down, skips with the reason elsewhere)."""
    return PG_URL, pg_url_kwargs(pg_schema)


# --------------------------------------------------------------------------
# the private PostgreSQL server

_PG_CTL_SCRIPT = r"""#!/bin/sh
# pg_ctl for the private PostgreSQL of tests/reliability; as root (which
# PostgreSQL refuses), run it as the postgres user, giving it the data's parent
# directory and initdb's password file.
set -e
if [ "$(id -u)" != "0" ]; then exec "{pg_ctl}" "$@"; fi
prev=""
for arg in "$@"; do
    case "$prev" in -D|--pgdata) chown postgres: "$(dirname "$arg")" ;; esac
    case "$arg" in
        *--pwfile=*)
            pwfile=$(printf '%s\n' "$arg" | sed -n 's/.*--pwfile=\([^ ]*\).*/\1/p')
            chown postgres: "$pwfile" ;;
    esac
    prev="$arg"
done
exec setpriv --reuid=postgres --regid=postgres --init-groups "{pg_ctl}" "$@"
"""

#: where the pg_ctl wrapper is written (per process, so xdist workers do not share it)
_PG_CTL = Path(tempfile.gettempdir()) / f"async_orm-reliability-pg_ctl-{os.getpid()}"

_private_pg_proc = factories.postgresql_proc(
    executable=str(_PG_CTL),
    host="127.0.0.1",
    port=None,  # any free port
    user="postgres",
    password=PRIVATE_PG_PASSWORD,  # password authentication: see test_security.py
    dbname="reliability",
    postgres_options="-c max_connections=60",
)


if RUNNING_AS_ROOT:

    @pytest.fixture(scope="session")
    def tmp_path_factory() -> Iterator[pytest.TempPathFactory]:
        """As root, temporary directories under a base that the postgres user
        can traverse (pytest's own is mode 0700), so that the private server
        can reach its data directory.  Only for the tests in this folder."""
        base = Path(tempfile.mkdtemp(prefix="async_orm-reliability-"))
        factory = pytest.TempPathFactory(
            given_basetemp=base / "t",
            retention_count=0,
            retention_policy="none",
            trace=lambda *args: None,
            _ispytest=True,
        )
        made = factory.getbasetemp()
        for path in (base, made):
            path.chmod(path.stat().st_mode | stat.S_IXOTH)
        yield factory
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def _pg_ctl_wrapper() -> Iterator[Path]:
    pg_ctl = PG_BINDIR / "pg_ctl"
    reason = None
    if not (pg_ctl.is_file() and os.access(pg_ctl, os.X_OK)):
        reason = f"no PostgreSQL server binaries at {PG_BINDIR} (set ASYNC_ORM_PG_BINDIR)"
    elif RUNNING_AS_ROOT and shutil.which("setpriv") is None:
        reason = "running as root and setpriv is missing: cannot start PostgreSQL as postgres"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    _PG_CTL.write_text(_PG_CTL_SCRIPT.format(pg_ctl=pg_ctl))
    _PG_CTL.chmod(0o755)
    yield _PG_CTL
    _PG_CTL.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def private_pg(_pg_ctl_wrapper: Path, request: pytest.FixtureRequest) -> PostgreSQLExecutor:
    """A PostgreSQL server of this test session only, which tests may stop and start."""
    executor: PostgreSQLExecutor = request.getfixturevalue("_private_pg_proc")
    return executor
