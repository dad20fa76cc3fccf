"""Helpers shared by the reliability tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_orm
from async_orm import _worker


class RelBase(DeclarativeBase):
    pass


class Row(RelBase):
    """One row written by request ``request``; ``part`` numbers the rows of one
    request.  No unique constraint on (request, part): a row written twice must
    show up as two rows, not as an error."""

    __tablename__ = "reliability_rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    request: Mapped[int] = mapped_column(index=True)
    part: Mapped[int] = mapped_column(default=0)


def _rows_per_request(sync_engine: sa.Engine) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    with sync_engine.connect() as conn:
        rows = conn.execute(sa.select(Row.request, Row.part).order_by(Row.request, Row.part))
        for request, part in rows:
            out.setdefault(request, []).append(part)
    return out


async def rows_per_request(engine: async_orm.AsyncEngine) -> dict[int, list[int]]:
    """request -> its sorted parts, read with a plain sync connection on a thread
    of its own (not through the code under test)."""
    return await asyncio.to_thread(_rows_per_request, engine.sync_engine)


def _take_every_slot(limiter: _worker.Limiter) -> None:
    for _ in range(limiter.capacity):
        limiter.acquire_blocking(_worker._Request())  # waits; raises after limiter.timeout
    limiter.release(limiter.capacity)


async def every_slot_back(engine: async_orm.AsyncEngine) -> None:
    """Wait until every worker slot of ``engine`` has come back, by taking them all
    (then giving them back), on a thread of its own.

    A cancelled task may end while its call is still on the worker (fenced, see
    docs/cancellation): its slot, worker and connection come back when the call
    does, and a runner gives its connection back before its slot.  So once every
    slot has been taken, no fenced call is left and anything still checked out of
    the pool is a leak."""
    await asyncio.to_thread(_take_every_slot, engine._limiter)


#: the private server's superuser password (it uses password authentication)
PRIVATE_PG_PASSWORD = "pr1vate-PW"


def private_pg_url(executor: PostgreSQLExecutor, password: str = PRIVATE_PG_PASSWORD) -> str:
    """The URL of the ``postgres`` database of a private server."""
    return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{executor.port}/postgres"
