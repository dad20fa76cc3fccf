"""One workload of the instruction-count A/B: ``python work.py WORKLOAD N``.

Runs a warm-up, then ``N`` measured operations on a throwaway SQLite file (pool
10 + 0), or on the database of ``WORK_URL`` (a sync URL, e.g. PostgreSQL over psycopg; the
workload drops and creates its ``users`` table there, so one run at a time).  With
``CGCTL=1`` in the environment, callgrind's instrumentation is switched on
(``callgrind_control -i on``) only around the measured operations; ``opcount.py`` replaces
:func:`toggle` to count bytecodes over the same section.

Workloads: ``pk_get`` (``session.get()`` in one session, as the suite's),
``insert_commit`` (a session per insert), ``request`` (a session per get + update +
commit), ``concurrent`` (batches of 100 tasks, a session each, per 100 operations).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_orm


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    n: Mapped[int] = mapped_column(Integer, default=0)


def toggle(on: bool) -> None:
    if os.environ.get("CGCTL"):
        subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )


async def run(op: Callable[[int], Awaitable[None]], n: int) -> None:
    for i in range(max(50, n // 5)):
        await op(i)
    toggle(True)
    start = time.perf_counter()
    for i in range(n):
        await op(i)
    elapsed = time.perf_counter() - start
    toggle(False)
    print(f"{n / elapsed:.1f} ops/s (not comparable under valgrind)", file=sys.stderr)


async def main(workload: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = os.environ.get("WORK_URL") or f"sqlite:///{tmp}/work.db"
        engine = async_orm.create_async_engine(url, pool_size=10, max_overflow=0)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
        async with maker() as s:
            # ids 1-200 from the database, so that its sequence (PostgreSQL) goes on at 201
            s.add_all([User(name=f"u{i}") for i in range(1, 201)])
            await s.commit()
        if workload == "pk_get":
            async with maker() as session:

                async def get(i: int) -> None:
                    await session.get(User, 1 + i % 200)

                await run(get, n)
        elif workload == "insert_commit":

            async def insert(i: int) -> None:
                async with maker() as s:
                    s.add(User(name="x"))
                    await s.commit()

            await run(insert, n)
        elif workload == "request":

            async def request(i: int) -> None:
                async with maker() as s:
                    user = await s.get(User, 1 + i % 200)
                    assert user is not None
                    user.n += 1
                    await s.commit()

            await run(request, n)
        elif workload == "concurrent":

            async def one(i: int) -> None:
                async with maker() as s:
                    await s.get(User, 1 + i % 200)

            async def batch(i: int) -> None:
                await asyncio.gather(*(one(i * 100 + k) for k in range(100)))

            await run(batch, max(1, n // 100))
        else:
            raise SystemExit(f"unknown workload {workload!r}")
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
