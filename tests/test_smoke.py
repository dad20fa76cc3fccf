from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import selectinload

import async_orm
from tests.conftest import StatementThreads
from tests.models import Address, User


async def test_orm_round_trip(maker: async_orm.async_sessionmaker[async_orm.AsyncSession]) -> None:
    async with maker() as session:
        session.add(User(name="ann", addresses=[Address(email="ann@example.com")]))
        await session.commit()
    async with maker() as session:
        users = (await session.scalars(select(User).options(selectinload(User.addresses)))).all()
        assert [(u.name, [a.email for a in u.addresses]) for u in users] == [
            ("ann", ["ann@example.com"])
        ]


async def test_session_statements_run_on_one_worker_thread(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
    statement_threads: StatementThreads,
) -> None:
    async with maker() as session:
        session.add_all([User(name=f"u{i}") for i in range(3)])
        await session.flush()
        await session.execute(select(User))
        await session.get(User, 1)
        await session.commit()
    assert len(statement_threads.records) >= 3
    assert len(statement_threads.threads) == 1
    assert threading.get_ident() not in statement_threads.threads
