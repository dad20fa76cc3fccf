"""Results and streams under asyncio and Trio: the buffered ``Result`` of
``execute()`` and the ``AsyncResult`` family of ``stream()`` (scalars, unique,
mappings, freeze, the one / one_or_none errors), partitions, ``async for``, and a
stream closed after part of it was read."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text
from sqlalchemy.engine import FrozenResult, RowMapping
from sqlalchemy.sql import Executable

import async_orm
from async_orm.result import AsyncMappingResult, AsyncResult, AsyncScalarResult
from tests.anyloop.conftest import LoopRun
from tests.conftest import seed_users
from tests.models import User

ROWS = 25
ordered = select(User.id, User.name).order_by(User.id)
by_id = select(User.id, User.name).where(User.id == 7)
none = select(User.id).where(User.id < 0)
#: user 1 has two addresses: the join gives its name twice
joined = select(User.name).join(User.addresses).order_by(User.name)


async def _seed(engine: async_orm.AsyncEngine) -> None:
    await seed_users(engine, ROWS, digits=2)


def test_result_views_scalars_unique_mappings_and_freeze(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        await _seed(engine)
        async with async_orm.AsyncSession(engine) as session:
            buffered = await session.execute(ordered)  # a sync Result, read without I/O
            assert [row.id for row in buffered] == list(range(1, ROWS + 1))
            assert (await session.scalars(select(User.id).where(User.id < 4))).all() == [1, 2, 3]
            assert (await session.execute(joined)).scalars().unique().all() == ["u01"]
            assert dict((await session.execute(by_id)).mappings().one()) == {
                "id": 7,
                "name": "u07",
            }

            streamed = await session.stream(ordered)
            assert isinstance(streamed, AsyncResult)
            scalars = streamed.scalars()
            assert isinstance(scalars, AsyncScalarResult)
            assert await scalars.all() == list(range(1, ROWS + 1))
            assert await (await session.stream_scalars(select(User.name).limit(2))).all() == [
                "u01",
                "u02",
            ]
            assert len(await (await session.stream(joined)).all()) == 2
            assert await (await session.stream(joined)).unique().all() == [("u01",)]
            users = await (await session.stream(select(User).join(User.addresses))).unique().all()
            assert [user.id for (user,) in users] == [1]

            mappings = (await session.stream(ordered)).mappings()
            assert isinstance(mappings, AsyncMappingResult)
            mapping = await mappings.fetchone()
            assert isinstance(mapping, RowMapping) and dict(mapping) == {"id": 1, "name": "u01"}
            await mappings.close()

            frozen = await (await session.stream(ordered.limit(3))).freeze()
            assert isinstance(frozen, FrozenResult)
            expected = [(1, "u01"), (2, "u02"), (3, "u03")]
            assert [tuple(row) for row in frozen().all()] == expected
            assert [tuple(row) for row in frozen().all()] == expected  # reusable

    run(body)


def test_one_and_one_or_none_raise_on_no_or_several_rows(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        await _seed(engine)
        async with async_orm.AsyncSession(engine) as session:

            async def stream(statement: Executable) -> AsyncResult[Any]:
                return await session.stream(statement)

            assert (await (await stream(by_id)).one()).name == "u07"
            one_or_none = await (await stream(by_id)).one_or_none()
            assert one_or_none is not None and one_or_none.name == "u07"
            assert await (await stream(none)).one_or_none() is None
            with pytest.raises(sa_exc.NoResultFound):
                await (await stream(none)).one()
            with pytest.raises(sa_exc.MultipleResultsFound):
                await (await stream(ordered)).one()
            with pytest.raises(sa_exc.MultipleResultsFound):
                await (await stream(ordered)).one_or_none()
            assert await (await stream(by_id)).scalar_one() == 7
            with pytest.raises(sa_exc.NoResultFound):
                await (await stream(none)).scalar_one()
            assert await (await stream(none)).scalar_one_or_none() is None
            with pytest.raises(sa_exc.MultipleResultsFound):
                await (await stream(ordered)).scalar_one_or_none()
            with pytest.raises(sa_exc.MultipleResultsFound):
                await (await stream(ordered)).scalars().one_or_none()
            # the buffered Result of execute() raises the same
            with pytest.raises(sa_exc.MultipleResultsFound):
                (await session.execute(ordered)).one_or_none()
            with pytest.raises(sa_exc.NoResultFound):
                (await session.execute(none)).scalar_one()
            # after an error the session still works
            assert await session.scalar(text("select 5")) == 5

    run(body)


def test_streams_read_in_part_then_closed_and_async_for_over_partitions(run: LoopRun) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        await _seed(engine)
        postgresql = run.backend == "postgresql"
        open_cursors = text("select count(*) from pg_cursors")
        async with async_orm.AsyncSession(engine) as session:
            result = await session.stream(ordered, execution_options={"yield_per": 5})
            first = await result.fetchmany(3)
            assert [row.id for row in first] == [1, 2, 3]
            if postgresql:  # a server-side cursor, still open
                assert await session.scalar(open_cursors) == 1
            await result.close()
            assert result.closed
            if postgresql:
                assert await session.scalar(open_cursors) == 0
            assert await session.scalar(text("select 1")) == 1  # the session carries on

            ids = [row.id async for row in await session.stream(ordered)]
            assert ids == list(range(1, ROWS + 1))
            names = [name async for name in await session.stream_scalars(select(User.name))]
            assert sorted(names) == [f"u{i:02d}" for i in range(1, ROWS + 1)]

            streamed = await session.stream_scalars(select(User).order_by(User.id))
            async for user in streamed:
                if user.id == 2:
                    break  # leave the rest unread
            await streamed.close()
            assert streamed.closed

        async with engine.connect() as conn:
            result = await conn.stream(ordered)
            sizes = [len(partition) async for partition in result.partitions(10)]
            assert sizes == [10, 10, 5]
            result = await conn.stream(ordered, execution_options={"yield_per": 8})
            partitions = [[row.id for row in p] async for p in result.partitions()]
            assert partitions == [list(range(i, min(i + 8, ROWS + 1))) for i in (1, 9, 17, 25)]
            scalars = await conn.stream_scalars(select(User.id).order_by(User.id))
            assert await scalars.fetchmany(2) == [1, 2]
            await scalars.close()
            assert await conn.scalar(text("select 3")) == 3

    run(body)
