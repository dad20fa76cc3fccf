"""Static typing of async_orm's API, checked by ``mypy --strict`` and pyright
(strict) (see tests/test_typing.py); never imported or run by pytest.

Each ``assert_type`` states the type a user of ``sqlalchemy.ext.asyncio`` gets
from the same expression.  The ``# type: ignore[arg-type]`` and ``# pyright:
ignore[reportArgumentType]`` lines prove that mypy and pyright *reject* a wrong
call: under both an ignore that suppresses nothing is itself an error.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection, ScalarResult
from sqlalchemy.orm import Session
from typing_extensions import assert_type
from typing_models import MySession, User

from async_orm import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def describe(session: Session, n: int) -> str:
    return f"{session!r} {n}"


def count_on(connection: Connection, table: str) -> int:
    return len(table)


async def session_queries(session: AsyncSession) -> None:
    assert_type(await session.scalars(select(User)), ScalarResult[User])
    assert_type(await session.get(User, 1), User | None)
    assert_type(await session.get_one(User, 1), User)
    assert_type(await session.scalar(select(User.id)), int | None)


async def run_sync_is_typed_with_concatenate(session: AsyncSession) -> None:
    assert_type(await session.run_sync(describe, 1), str)
    assert_type(await session.run_sync(describe, n=2), str)
    await session.run_sync(describe, "one")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def connection_run_sync(conn: AsyncConnection) -> None:
    assert_type(await conn.run_sync(count_on, "users"), int)
    await conn.run_sync(count_on, 1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def sessionmaker_is_generic() -> None:
    engine = create_async_engine("sqlite://")
    assert_type(engine, AsyncEngine)

    maker = async_sessionmaker(engine, expire_on_commit=False)
    assert_type(maker, async_sessionmaker[AsyncSession])
    assert_type(maker(), AsyncSession)
    async with maker() as session:
        assert_type(session, AsyncSession)
    async with maker.begin() as session:
        assert_type(session, AsyncSession)

    annotated: async_sessionmaker[AsyncSession] = async_sessionmaker(engine)
    assert_type(annotated(), AsyncSession)

    custom = async_sessionmaker(engine, class_=MySession)
    assert_type(custom, async_sessionmaker[MySession])
    assert_type(custom(), MySession)
    async with custom.begin() as mine:
        assert_type(mine, MySession)
