"""Read replica routing (tests/topology/routing.py, the recipe on docs/scaling.rst)
over a private primary and its streaming replica (hot standby)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import func, literal_column, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_orm
from tests.topology._servers import Topology
from tests.topology.conftest import EngineFactory
from tests.topology.routing import RoutingSession

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(unique=True)


#: which server answered: (is it in recovery, its port)
SERVER = select(func.pg_is_in_recovery(), func.inet_server_port())


@pytest.fixture
async def engines(
    topology: Topology, database: str, make_engine: EngineFactory
) -> AsyncIterator[tuple[async_orm.AsyncEngine, async_orm.AsyncEngine]]:
    assert topology.replica is not None
    primary = make_engine(topology.primary.url(database), pool_size=4, max_overflow=0)
    replica = make_engine(topology.replica.url(database), pool_size=4, max_overflow=0)
    async with primary.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield primary, replica


def _maker(
    engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine], **kw: Any
) -> async_orm.async_sessionmaker[async_orm.AsyncSession]:
    primary, replica = engines
    return async_orm.async_sessionmaker(
        primary,
        sync_session_class=RoutingSession,
        replica=replica.sync_engine,
        expire_on_commit=False,
        **kw,
    )


async def test_reads_go_to_the_replica_writes_and_a_write_transaction_to_the_primary(
    topology: Topology, engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine]
) -> None:
    assert topology.replica is not None
    maker = _maker(engines)
    async with maker() as session:
        assert (await session.execute(SERVER)).one() == (True, topology.replica.port)
        assert await session.scalar(select(func.count()).select_from(Note)) == 0
        await session.commit()

        async with session.begin():
            session.add(Note(key="a"))
            await session.flush()
            # a read after the transaction's first write: the primary, which has the row
            assert (await session.execute(SERVER)).one() == (False, topology.primary.port)
            assert await session.scalar(select(Note.key)) == "a"
        # the transaction is over: reads are the replica's again
        assert (await session.execute(SERVER)).one()[0] is True
        await session.commit()

        # text() is not known to be a read; bind_arguments={"primary": True} forces it
        assert await session.scalar(text("select pg_is_in_recovery()")) is False
        await session.commit()
        assert (
            await session.scalar(
                select(func.pg_is_in_recovery()), bind_arguments={"primary": True}
            )
            is False
        )
        await session.commit()
        assert await session.scalar(select(func.pg_is_in_recovery()).with_for_update()) is False


async def test_read_your_writes_waits_for_the_replica_to_replay_the_commit(
    topology: Topology, engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine]
) -> None:
    assert topology.replica is not None
    maker = _maker(engines, replica_wait=30.0)  # no fallback: the replica must catch up
    async with maker() as session:
        async with session.begin():
            session.add(Note(key="mine"))
        assert session.info["commit_lsn"] is not None
        found = (
            await session.execute(
                select(Note.key, func.inet_server_port()).where(Note.key == "mine")
            )
        ).one()
        assert found == ("mine", topology.replica.port)


@pytest.fixture
def replica_paused(
    topology: Topology, engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine]
) -> Iterator[None]:
    """The replica receives WAL but does not replay it: lag, on demand (once it has
    replayed everything so far, the test's tables included)."""
    assert topology.replica is not None
    with psycopg.connect(
        host="127.0.0.1", port=topology.primary.port, user="postgres", autocommit=True
    ) as primary:
        row = primary.execute("select pg_current_wal_lsn()").fetchone()
    assert row is not None
    with psycopg.connect(
        host="127.0.0.1", port=topology.replica.port, user="postgres", autocommit=True
    ) as conn:
        deadline = time.monotonic() + 30
        caught_up = "select pg_last_wal_replay_lsn() >= %s"
        while conn.execute(caught_up, row).fetchone() != (True,):
            assert time.monotonic() < deadline, "the replica did not catch up in 30 s"
            time.sleep(0.01)  # polling the replica, not synchronising the test
        conn.execute("select pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("select pg_wal_replay_resume()")


async def test_read_your_writes_goes_to_the_primary_while_the_replica_lags(
    topology: Topology,
    engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine],
    replica_paused: None,
) -> None:
    assert topology.replica is not None
    maker = _maker(engines, replica_wait=0.2)
    where = select(Note.key, func.inet_server_port()).where(Note.key == "lagged")
    async with maker() as session:
        async with session.begin():
            session.add(Note(key="lagged"))
        commit_lsn = session.info["commit_lsn"]
        # the replica has not replayed the commit: this session reads from the primary
        assert (await session.execute(where)).one() == ("lagged", topology.primary.port)

    # the lag is real: a session that does not ask for its writes does not see them
    async with maker() as other:
        assert (await other.execute(where)).all() == []
    # a later request carrying the position (min_lsn=) does
    async with maker(min_lsn=commit_lsn) as later:
        assert (await later.execute(where)).one() == ("lagged", topology.primary.port)


def test_the_recipe_refuses_a_session_without_a_primary_bind() -> None:
    session = RoutingSession(replica=sa.create_engine("sqlite://"))
    with pytest.raises(AssertionError, match="bind the session to the primary"):
        session.get_bind(clause=select(1))
    session.close()


async def test_cancelling_a_routed_read_cancels_its_statement_on_the_replica(
    topology: Topology, engines: tuple[async_orm.AsyncEngine, async_orm.AsyncEngine]
) -> None:
    """The replica engine is reached only through get_bind: a cancelled task's
    statement there is interrupted all the same (gone within a second)."""
    assert topology.replica is not None
    replica_port = topology.replica.port

    def sleepers() -> int:
        with psycopg.connect(
            host="127.0.0.1", port=replica_port, user="postgres", autocommit=True
        ) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity where state = 'active' "
                "and query like '%pg_sleep(33.5)%' and pid <> pg_backend_pid()"
            ).fetchone()
        return int(row[0]) if row else 0

    async def until(count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while await asyncio.to_thread(sleepers) != count:
            assert time.monotonic() < deadline, f"not {count} sleeper(s) within {within} s"
            await asyncio.sleep(0.01)  # polling the replica's view, not synchronising

    maker = _maker(engines)

    async def read() -> None:
        async with maker() as session:
            await session.execute(select(func.pg_sleep(literal_column("33.5"))))

    task = asyncio.create_task(read())
    await until(1, within=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(0, within=1.0)
