"""async_orm through PgBouncer in transaction-pooling mode (psycopg 3, sync).

What must be set: ``connect_args={"prepare_threshold": None}`` (PgBouncer 1.18,
Debian 12's, keeps no track of prepared statements; see BOUNCER_CONNECT_ARGS).
Then the ORM works, a cancelled task's statement is cancelled through the
bouncer, and a restart of the primary behind it is survived.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_orm
from tests.topology._servers import Topology
from tests.topology.conftest import BOUNCER_CONNECT_ARGS, AdminQuery, EngineFactory


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[int] = mapped_column(index=True)
    name: Mapped[str]


async def _create_tables(engine: async_orm.AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def test_orm_unit_of_work_through_transaction_pooling(
    topology: Topology, database: str, make_engine: EngineFactory
) -> None:
    """Ten sessions at once over a bouncer pool of a few server connections, each
    running the same statements more often than psycopg's prepare_threshold (5):
    every transaction sees its own writes, none sees another's uncommitted ones."""
    engine = make_engine(
        topology.bouncer.url(database), pool_size=10, connect_args=BOUNCER_CONNECT_ARGS
    )
    await _create_tables(engine)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)

    async def request(owner: int) -> list[str]:
        async with maker() as session:
            for round_ in range(8):
                async with session.begin():
                    session.add(Item(owner=owner, name=f"{owner}-{round_}"))
                    await session.flush()
                    # inside the transaction: the row is there (same server connection)
                    mine = await session.scalar(
                        select(func.count()).select_from(Item).where(Item.owner == owner)
                    )
                    assert mine == round_ + 1
            item = await session.get(Item, 1)
            assert item is None or item.id == 1
            await session.commit()
            async with session.begin():
                await session.execute(
                    sa.update(Item).where(Item.owner == owner).values(name=Item.name + "!")
                )
            names = (await session.scalars(select(Item.name).where(Item.owner == owner))).all()
            await session.rollback()
            return sorted(names)

    async with asyncio.TaskGroup() as group:  # one failing cancels the others
        tasks = [group.create_task(request(owner)) for owner in range(10)]
    for owner, names in enumerate(task.result() for task in tasks):
        assert names == sorted(f"{owner}-{r}!" for r in range(8))


@pytest.mark.parametrize(
    "prepare", ["psycopg default", "prepare_threshold=None", "pgbouncer=True"]
)
async def test_prepared_statements_behind_the_bouncer(
    topology: Topology, database: str, make_engine: EngineFactory, prepare: str
) -> None:
    """Why BOUNCER_CONNECT_ARGS exists.  Session A runs a statement more often than
    psycopg's prepare_threshold (5) in one transaction, so psycopg prepares it on
    that server connection; session B's next transaction gets that server
    connection (PgBouncer reuses the last one freed), and A's next one another,
    which does not know the statement.  With psycopg's default A fails there;
    with ``prepare_threshold=None`` it works.  If the default case starts passing,
    the installed PgBouncer tracks prepared statements (max_prepared_statements,
    1.21+): update docs/scaling.rst."""
    if prepare == "pgbouncer=True":  # the user says so: async_orm sets what is needed
        engine = make_engine(topology.bouncer.url(database), pgbouncer=True)
    else:
        connect_args = BOUNCER_CONNECT_ARGS if prepare == "prepare_threshold=None" else {}
        engine = make_engine(topology.bouncer.url(database), connect_args=connect_args)
    await _create_tables(engine)
    maker = async_orm.async_sessionmaker(engine)
    query = select(func.count()).select_from(Item).where(Item.owner == 1)

    async with maker() as session_b, maker() as session_a:
        await session_b.connection()  # a client connection of its own, idle at the bouncer
        async with session_a.begin():
            for _ in range(7):
                await session_a.scalar(query)
        await session_b.execute(text("select 1"))  # takes the server A just freed
        if prepare == "psycopg default":
            with pytest.raises(sa_exc.DBAPIError, match='prepared statement "_pg3_0" does not'):
                await session_a.scalar(query)
        else:
            assert await session_a.scalar(query) == 0
        await session_b.rollback()


async def _wait_for(
    primary_admin: AdminQuery, sql: str, *params: Any, present: bool, within: float
) -> float:
    """Seconds until ``sql`` returns rows (present) or none (not present)."""
    start = time.monotonic()
    while True:
        rows = await primary_admin(sql, *params)
        if bool(rows) == present:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            state = "appear" if present else "go away"
            raise AssertionError(f"rows of {sql!r} did not {state} within {within} s: {rows}")
        await asyncio.sleep(0.01)  # polling another server's view, not synchronising


_SLEEPERS = (
    "select pid from pg_stat_activity where state = 'active' and query like %s "
    "and pid <> pg_backend_pid()"
)


async def test_cancelled_task_cancels_its_statement_through_the_bouncer(
    topology: Topology, database: str, make_engine: EngineFactory, primary_admin: AdminQuery
) -> None:
    """psycopg's cancel request goes to the bouncer, which forwards it to the
    server connection running the statement: gone from the primary within a second."""
    engine = make_engine(topology.bouncer.url(database), connect_args=BOUNCER_CONNECT_ARGS)
    maker = async_orm.async_sessionmaker(engine)
    marker = "%pg_sleep(31.5)%"

    async def sleeper() -> None:
        async with maker() as session:
            await session.execute(text("select pg_sleep(31.5)"))

    task = asyncio.create_task(sleeper())
    await _wait_for(primary_admin, _SLEEPERS, marker, present=True, within=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_for(primary_admin, _SLEEPERS, marker, present=False, within=1.0)

    # the bouncer's server connection and the client's are both usable again
    async with maker() as session:
        assert await session.scalar(text("select 1")) == 1


async def test_timeout_around_a_statement_through_the_bouncer(
    topology: Topology, database: str, make_engine: EngineFactory, primary_admin: AdminQuery
) -> None:
    """asyncio.timeout() around a long statement: TimeoutError, and the
    statement is no longer running on the primary a second later."""
    engine = make_engine(topology.bouncer.url(database), connect_args=BOUNCER_CONNECT_ARGS)
    maker = async_orm.async_sessionmaker(engine)
    async with maker() as session:
        await session.execute(text("select 1"))  # connected: the timeout covers only the sleep
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await session.execute(text("select pg_sleep(32.5)"))
        await session.rollback()
        await _wait_for(primary_admin, _SLEEPERS, "%pg_sleep(32.5)%", present=False, within=1.0)
        assert await session.scalar(text("select 2")) == 2


async def test_pool_pre_ping_and_a_primary_restart_behind_the_bouncer(
    topology: Topology, database: str, make_engine: EngineFactory
) -> None:
    """Restart the (private) primary behind the bouncer: the client's pooled
    connections to the bouncer survive, pre-ping passes through it, and the next
    sessions work without an error; a transaction open across the restart fails
    once, with a DBAPIError, and its session recovers after a rollback."""
    engine = make_engine(
        topology.bouncer.url(database),
        pool_size=4,
        pool_pre_ping=True,
        connect_args=BOUNCER_CONNECT_ARGS,
    )
    await _create_tables(engine)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)

    async def one_request(owner: int) -> int:
        async with maker() as session, session.begin():
            session.add(Item(owner=owner, name="x"))
            await session.flush()
            return int(await session.scalar(select(func.count()).select_from(Item)) or 0)

    for _ in await asyncio.gather(*(one_request(i) for i in range(4))):  # fill the pool
        pass
    open_across = maker()
    await open_across.begin()
    await open_across.execute(text("select 1"))  # holds a server connection

    primary = topology.primary
    await asyncio.to_thread(primary.stop)
    await asyncio.to_thread(primary.start)

    with pytest.raises(sa_exc.DBAPIError):
        await open_across.execute(text("select 1"))
    await open_across.rollback()
    assert await open_across.scalar(text("select 3")) == 3
    await open_across.close()

    counts = await asyncio.gather(*(one_request(i) for i in range(8)))
    assert len(counts) == 8
    async with maker() as session:
        total = await session.scalar(select(func.count()).select_from(Item))
    assert total == 12


async def test_stream_through_the_bouncer(
    topology: Topology, database: str, make_engine: EngineFactory
) -> None:
    """stream() runs a server-side cursor, which lives inside its transaction:
    it works in transaction pooling, chunk after chunk, while other sessions
    use the bouncer's other server connections."""
    engine = make_engine(topology.bouncer.url(database), connect_args=BOUNCER_CONNECT_ARGS)
    await _create_tables(engine)
    maker = async_orm.async_sessionmaker(engine)
    async with maker() as session, session.begin():
        session.add_all([Item(owner=n % 3, name=f"n{n}") for n in range(500)])

    async def stream_all() -> int:
        async with maker() as session, session.begin():
            result = await session.stream_scalars(
                select(Item).order_by(Item.id).execution_options(yield_per=50)
            )
            return len([item async for item in result])

    assert await asyncio.gather(*(stream_all() for _ in range(4))) == [500] * 4
