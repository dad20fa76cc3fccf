"""Return types of the statement methods, as ``sqlalchemy.ext.asyncio`` 2.1
declares them (its overloads on ``TypedReturnsRows``), checked by ``mypy
--strict`` and pyright (strict) (see tests/test_typing.py); never imported or
run by pytest.

Code moved from ``sqlalchemy.ext.asyncio`` keeps its inferred types only if
each of these holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.engine import CursorResult, Result, Row, RowMapping, ScalarResult
from typing_extensions import assert_type
from typing_models import User

from async_orm import (
    AsyncConnection,
    AsyncResult,
    AsyncScalarResult,
    AsyncSession,
    AsyncTupleResult,
)


async def session_statements(session: AsyncSession) -> None:
    assert_type(await session.execute(select(User.id, User.name)), Result[int, str])
    assert_type(await session.stream(select(User.id, User.name)), AsyncResult[int, str])
    assert_type(await session.stream_scalars(select(User)), AsyncScalarResult[User])
    conn = await session.connection()
    assert_type(conn, AsyncConnection)


async def connection_statements(conn: AsyncConnection) -> None:
    assert_type(await conn.execute(select(User.id)), CursorResult[int])
    assert_type(await conn.scalars(select(User.id)), ScalarResult[int])
    assert_type(await conn.stream(select(User.id)), AsyncResult[int])
    assert_type(await conn.stream_scalars(select(User.id)), AsyncScalarResult[int])


async def streamed_rows(session: AsyncSession) -> None:
    result = await session.stream(select(User.id, User.name))
    assert_type(await result.all(), Sequence[Row[int, str]])
    assert_type(await result.first(), Row[int, str] | None)
    assert_type(result.scalars(), AsyncScalarResult[int])
    assert_type(await result.scalars().all(), Sequence[int])
    assert_type(result.t, AsyncTupleResult[tuple[int, str]])
    async for row in result:
        assert_type(row, Row[int, str])
    async for user_id in result.scalars():
        assert_type(user_id, int)
    async for mapping in result.mappings():
        assert_type(mapping, RowMapping)
    async for pair in result.t:
        assert_type(pair, tuple[int, str])
    assert_type(await result.t.all(), Sequence[tuple[int, str]])
    assert_type(await result.t.one(), tuple[int, str])
    assert_type(await (await session.stream(select(User.id))).t.scalar_one(), int)
    async for user in await session.stream_scalars(select(User)):
        assert_type(user, User)
    async for mapping in (await session.stream(select(User))).mappings().unique():
        assert_type(mapping, RowMapping)


async def streamed_rows_of_a_connection(conn: AsyncConnection) -> None:
    async for row in await conn.stream(select(User.id, User.name)):
        assert_type(row, Row[int, str])
    async for name in await conn.stream_scalars(select(User.name)):
        assert_type(name, str)
    async for partition in (await conn.stream(select(User.id))).partitions(100):
        assert_type(partition, Sequence[Row[int]])
