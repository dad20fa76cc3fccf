"""Fixtures of the topology tests: a private primary, its streaming replica and a
PgBouncer (transaction pooling) in front of the primary, started once for the
session on 127.0.0.1 and free ports, and stopped by pid at the end.

Skipped, with the reason, where the PostgreSQL server binaries or ``pgbouncer``
are missing; failing instead when ``CI=true``.  Each test gets a database of its
own on the primary (streamed to the replica), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

import async_orm
from tests.conftest import IN_CI, dispose_checking_leaks
from tests.topology._servers import Topology, missing_binaries, wait_until_accepting

#: what psycopg needs behind PgBouncer 1.18 in transaction mode: no server-side
#: prepared statements (a prepared statement lives on one server connection; the
#: next transaction may get another; PgBouncer >= 1.21 can track them itself
#: with max_prepared_statements)
BOUNCER_CONNECT_ARGS: dict[str, Any] = {"prepare_threshold": None}


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    reason = missing_binaries()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    started = Topology.start()
    yield started
    started.stop()


@pytest.fixture
def database(topology: Topology) -> Iterator[str]:
    """A fresh database on the primary, present on the replica too, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    topology.create_database(name)
    assert topology.replica is not None
    wait_until_accepting(topology.replica.port, name)  # replayed on the replica
    yield name
    with psycopg.connect(
        host="127.0.0.1", port=topology.primary.port, user="postgres", autocommit=True
    ) as conn:
        conn.execute(f'drop database "{name}" with (force)')


EngineFactory = Callable[..., async_orm.AsyncEngine]


@pytest.fixture
async def make_engine() -> AsyncIterator[EngineFactory]:
    """``make_engine(url, **create_engine_kw)``: every engine is checked for
    connections still checked out, then disposed, at teardown."""
    engines: list[async_orm.AsyncEngine] = []

    def make(url: str, **kw: Any) -> async_orm.AsyncEngine:
        engine = async_orm.create_async_engine(url, **kw)
        engines.append(engine)
        return engine

    yield make
    await dispose_checking_leaks(engines)


AdminQuery = Callable[..., Awaitable[list[tuple[Any, ...]]]]


@pytest.fixture
def primary_admin(topology: Topology) -> AdminQuery:
    """``await primary_admin(sql, *params)``: rows of a query run on the primary
    directly (not through the code under test), on a thread of its own."""

    def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(
            host="127.0.0.1", port=topology.primary.port, user="postgres", autocommit=True
        ) as conn:
            return conn.execute(sql, params).fetchall()

    async def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(query, sql, params)

    return run
