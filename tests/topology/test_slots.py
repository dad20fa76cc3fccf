"""A session that uses two engines holds a slot of each (design invariant 7):
routed reads on a replica and sharded sessions queue for each engine's slots
instead of timing out in its pool.

Both fail on today's code: a session takes a slot of its first bind's engine only
(a ShardedSession without a bind: none), so more sessions than the replica's (or a
shard's) pool reach it at once and wait in QueuePool, which times out.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

import async_orm
from tests.topology._servers import Topology
from tests.topology.conftest import EngineFactory
from tests.topology.test_replica import _maker as routing_maker
from tests.topology.test_sharding import SHARDS, shards
from tests.topology.test_sharding import _maker as sharded_maker

__all__ = ["shards"]  # the fixture, imported for the sharded test


async def test_each_engine_slots_respected_by_routed_sessions(
    topology: Topology, database: str, make_engine: EngineFactory
) -> None:
    """Eight routed sessions at once; the primary has 4 slots, the replica's pool
    1 connection.  Each session holds its replica connection for a while: the
    sessions must queue for the replica (its slot), not time out in its pool."""
    assert topology.replica is not None
    primary = make_engine(topology.primary.url(database), pool_size=4, max_overflow=0)
    replica = make_engine(
        topology.replica.url(database),
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
        worker_timeout=60,
    )
    maker = routing_maker((primary, replica))

    async def request() -> bool:
        async with maker() as session:
            return bool(await session.scalar(select(func.pg_is_in_recovery(), func.pg_sleep(0.4))))

    async with asyncio.TaskGroup() as group:  # one failing cancels (and closes) the others
        tasks = [group.create_task(request()) for _ in range(8)]
    assert [task.result() for task in tasks] == [True] * 8


async def test_concurrent_sharded_sessions_respect_each_shard_pool(
    shards: dict[str, async_orm.AsyncEngine], make_engine: EngineFactory
) -> None:
    """Ten sharded sessions at once, each holding a connection of both shards
    (pools of 2): they must queue for the shards' slots, not time out in their pools."""
    small = {
        name: make_engine(
            engine.url, pool_size=2, max_overflow=0, pool_timeout=0.2, worker_timeout=60
        )
        for name, engine in shards.items()
    }
    maker = sharded_maker(small)

    async def request() -> list[str]:
        async with maker() as session:  # one transaction: it keeps both connections
            return [
                str(
                    await session.scalar(
                        select(func.current_database(), func.pg_sleep(0.3)),
                        bind_arguments={"shard_id": shard},
                    )
                )
                for shard in SHARDS
            ]

    async with asyncio.TaskGroup() as group:  # one failing cancels (and closes) the others
        tasks = [group.create_task(request()) for _ in range(10)]
    expected = [str(small[shard].url.database) for shard in SHARDS]
    assert [task.result() for task in tasks] == [expected] * 10
