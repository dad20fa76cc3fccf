"""SQLAlchemy's ShardedSession (sqlalchemy.ext.horizontal_shard) through
``AsyncSession(sync_session_class=ShardedSession, shards=...)``, as SQLAlchemy's
own examples/sharding/asyncio.py does, across two PostgreSQL databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, ForeignKey, Integer, Table, func, inspect, select
from sqlalchemy.ext.horizontal_shard import ShardedSession, set_shard_id
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    immediateload,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.sql import operators, visitors

import async_orm
from tests.topology._servers import Topology
from tests.topology.conftest import EngineFactory


class Base(DeclarativeBase):
    pass


#: ids unique across the shards, from a table on shard "east" (as in the example)
ids = Table("ids", Base.metadata, Column("nextid", Integer, nullable=False))
SHARDS = ("east", "west")
SHARD_OF_REGION = {"Europe": "east", "Asia": "east", "America": "west"}
_id_engine: list[Any] = []  # the "east" sync engine of the running test


def next_id(context: Any) -> int:
    """Runs inside the flush, on the session's worker thread: plain sync code."""
    with _id_engine[0].begin() as conn:
        nextid: int = conn.scalar(ids.select().with_for_update())
        conn.execute(ids.update().values({ids.c.nextid: ids.c.nextid + 1}))
    return nextid


class City(Base):
    __tablename__ = "cities"

    id: Mapped[int] = mapped_column(primary_key=True, default=next_id)
    region: Mapped[str]
    name: Mapped[str]
    reports: Mapped[list[Report]] = relationship(back_populates="city")


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
    temperature: Mapped[float]
    city: Mapped[City] = relationship(back_populates="reports")


def shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
    if isinstance(instance, City):
        return SHARD_OF_REGION[instance.region]
    return shard_chooser(mapper, instance.city)


def identity_chooser(
    mapper: Any, primary_key: Any, *, lazy_loaded_from: Any, **kw: Any
) -> list[str]:
    if lazy_loaded_from:
        return [lazy_loaded_from.identity_token]
    return list(SHARDS)


def execute_chooser(context: Any) -> list[str]:
    """The shards a SELECT must visit: those of ``City.region == / IN`` criteria."""
    found: list[str] = []
    where = context.statement.whereclause
    if where is not None:
        for binary in _binaries(where):
            left, right = binary.left, binary.right
            if not (hasattr(left, "shares_lineage") and hasattr(right, "effective_value")):
                continue
            if left.shares_lineage(City.__table__.c.region):
                if binary.operator == operators.eq:
                    found.append(SHARD_OF_REGION[right.effective_value])
                elif binary.operator == operators.in_op:
                    found.extend(SHARD_OF_REGION[v] for v in right.effective_value)
    return sorted(set(found)) or list(SHARDS)


def _binaries(clause: Any) -> Iterator[Any]:
    for element in visitors.iterate(clause):
        if element.__visit_name__ == "binary":
            yield element


@pytest.fixture
async def shards(
    topology: Topology, database: str, make_engine: EngineFactory
) -> AsyncIterator[dict[str, async_orm.AsyncEngine]]:
    """Two databases on the private primary: ``east`` (the test's) and ``west``."""
    west_db = f"{database}_west"
    topology.create_database(west_db)
    engines = {
        "east": make_engine(topology.primary.url(database), pool_size=3, max_overflow=0),
        "west": make_engine(topology.primary.url(west_db), pool_size=3, max_overflow=0),
    }
    for engine in engines.values():
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    async with engines["east"].begin() as conn:
        await conn.execute(ids.insert(), {"nextid": 1})
    _id_engine[:] = [engines["east"].sync_engine]
    yield engines
    _id_engine.clear()
    for engine in engines.values():
        await engine.dispose()
    with psycopg.connect(
        host="127.0.0.1", port=topology.primary.port, user="postgres", autocommit=True
    ) as conn:
        conn.execute(f'drop database "{west_db}" with (force)')


def _maker(
    shards: dict[str, async_orm.AsyncEngine],
) -> async_orm.async_sessionmaker[async_orm.AsyncSession]:
    return async_orm.async_sessionmaker(
        sync_session_class=ShardedSession,
        expire_on_commit=False,
        shards={name: engine.sync_engine for name, engine in shards.items()},
        shard_chooser=shard_chooser,
        identity_chooser=identity_chooser,
        execute_chooser=execute_chooser,
    )


def _names_in(engine: async_orm.AsyncEngine) -> list[str]:
    with engine.sync_engine.connect() as conn:
        return sorted(conn.scalars(select(City.name)))


async def test_rows_go_to_their_shard_and_queries_span_the_shards(
    shards: dict[str, async_orm.AsyncEngine],
) -> None:
    maker = _maker(shards)
    async with maker() as session:
        paris = City(region="Europe", name="Paris")
        paris.reports.append(Report(temperature=21.0))
        session.add_all(
            [
                paris,
                City(region="Asia", name="Tokyo"),
                City(region="America", name="Quito"),
                City(region="America", name="Toronto"),
            ]
        )
        await session.commit()
        paris_id = paris.id

    # each row is in its shard's database, and only there
    assert await asyncio.to_thread(_names_in, shards["east"]) == ["Paris", "Tokyo"]
    assert await asyncio.to_thread(_names_in, shards["west"]) == ["Quito", "Toronto"]

    async with maker() as session:
        # a query without shard criteria visits every shard
        everywhere = (await session.scalars(select(City).order_by(City.name))).all()
        assert sorted(city.name for city in everywhere) == ["Paris", "Quito", "Tokyo", "Toronto"]
        tokens = {city.name: inspect(city).identity_token for city in everywhere}
        assert tokens == {"Paris": "east", "Tokyo": "east", "Quito": "west", "Toronto": "west"}

        # execute_chooser narrows a query to the shards its criteria name
        west = (await session.scalars(select(City).where(City.region == "America"))).all()
        assert {city.name for city in west} == {"Quito", "Toronto"}
        mixed = (
            await session.scalars(select(City).where(City.region.in_(["Asia", "America"])))
        ).all()
        assert {city.name for city in mixed} == {"Tokyo", "Quito", "Toronto"}

        # set_shard_id pins a query (and its loaders) to one shard
        pinned = (
            await session.scalars(
                select(City).where(City.name.startswith("T")).options(set_shard_id("west"))
            )
        ).all()
        assert [city.name for city in pinned] == ["Toronto"]

        # get() searches the identity chooser's shards; the identity key carries the token
        # (populate_existing: Paris is in this session already, without its reports)
        found = await session.get(
            City, paris_id, options=[immediateload(City.reports)], populate_existing=True
        )
        assert found is not None and found.name == "Paris"
        assert inspect(found).identity_token == "east"
        assert [r.temperature for r in found.reports] == [21.0]

        # a count per shard, through the same session
        counts = {
            shard: await session.scalar(
                select(func.count()).select_from(City), bind_arguments={"shard_id": shard}
            )
            for shard in SHARDS
        }
        assert counts == {"east": 2, "west": 2}


async def test_lazy_loads_and_selectinload_go_to_the_parent_shard(
    shards: dict[str, async_orm.AsyncEngine],
) -> None:
    maker = _maker(shards)
    async with maker() as session:
        quito = City(region="America", name="Quito")
        quito.reports.append(Report(temperature=14.5))
        session.add(quito)
        await session.commit()

    async with maker() as session:
        city = (await session.scalars(select(City).where(City.region == "America"))).one()
        reports = await session.run_sync(lambda _: list(city.reports))
        assert [(r.temperature, inspect(r).identity_token) for r in reports] == [(14.5, "west")]
        loaded = (
            await session.scalars(
                select(City).where(City.region == "America").options(selectinload(City.reports))
            )
        ).one()
        assert loaded.reports[0].temperature == 14.5
