"""Static typing of ``async_scoped_session``, checked by ``mypy --strict`` and
pyright (strict) (see tests/test_typing.py); never imported or run by pytest.

Every proxied method is declared, with the overloads of ``AsyncSession``: a
misspelled one is an error, and each returns what ``AsyncSession``'s returns.
A line that must be rejected carries ``# type: ignore[code]`` for mypy and
``# pyright: ignore[rule]`` for pyright; an ignore that suppresses nothing is
itself an error under both (``warn_unused_ignores``;
``reportUnnecessaryTypeIgnoreComment`` in pyrightconfig.json), so the line
must fail with exactly that code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.engine import Result, Row, RowMapping, ScalarResult
from typing_extensions import assert_type
from typing_models import MySession, User

from async_orm import (
    AsyncConnection,
    AsyncResult,
    AsyncScalarResult,
    AsyncSession,
    AsyncSessionTransaction,
    async_scoped_session,
    async_sessionmaker,
)


async def a_misspelled_method_is_an_error(scoped: async_scoped_session[AsyncSession]) -> None:
    await scoped.comit()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    print(scoped.dirtty)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownArgumentType]


async def wrong_arguments_are_errors(scoped: async_scoped_session[AsyncSession]) -> None:
    await scoped.get(User)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    scoped.add_all(User(id=1, name="a"))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    scoped.autoflush = "yes"  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]


async def identity(scoped: async_scoped_session[AsyncSession]) -> None:
    assert_type(await scoped.get(User, 1), User | None)
    assert_type(await scoped.get_one(User, 1), User)
    assert_type(await scoped.merge(User(id=1, name="a")), User)
    assert_type(scoped.is_modified(User()), bool)
    assert_type(User() in scoped, bool)


async def statements(scoped: async_scoped_session[AsyncSession]) -> None:
    assert_type(await scoped.execute(select(User.id, User.name)), Result[int, str])
    assert_type(await scoped.scalars(select(User)), ScalarResult[User])
    assert_type(await scoped.scalar(select(User.id)), int | None)
    assert_type(await scoped.stream(select(User.id, User.name)), AsyncResult[int, str])
    assert_type(await scoped.stream_scalars(select(User)), AsyncScalarResult[User])
    assert_type(await scoped.connection(), AsyncConnection)
    assert_type(scoped.begin(), AsyncSessionTransaction)
    assert_type(scoped.is_active, bool)
    assert_type(scoped.autoflush, bool)


async def streamed_rows(scoped: async_scoped_session[AsyncSession]) -> None:
    async for row in await scoped.stream(select(User.id, User.name)):
        assert_type(row, Row[int, str])
    async for user in await scoped.stream_scalars(select(User)):
        assert_type(user, User)
    async for mapping in (await scoped.stream(select(User.id))).mappings():
        assert_type(mapping, RowMapping)
    async for pair in (await scoped.stream(select(User.id, User.name))).t:
        assert_type(pair, tuple[int, str])
    async for chunk in (await scoped.stream_scalars(select(User.id))).partitions(10):
        assert_type(chunk, Sequence[int])


async def the_registry_is_generic(maker: async_sessionmaker[MySession]) -> None:
    scoped = async_scoped_session(maker, scopefunc=asyncio.current_task)
    assert_type(scoped, async_scoped_session[MySession])
    assert_type(scoped(), MySession)
    assert_type(scoped.session_factory, async_sessionmaker[MySession])
    assert_type(await scoped.get(User, 1), User | None)
    await scoped.remove()
