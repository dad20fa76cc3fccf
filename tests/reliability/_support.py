"""Helpers shared by the reliability tests (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_orm


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


#: the private server's superuser password (it uses password authentication)
PRIVATE_PG_PASSWORD = "pr1vate-PW"


def private_pg_url(executor: PostgreSQLExecutor, password: str = PRIVATE_PG_PASSWORD) -> str:
    """The URL of the ``postgres`` database of a private server."""
    return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{executor.port}/postgres"
