"""Scale-out run: several server processes writing through one PgBouncer.

Each process is one "application server": one AsyncEngine pointed at PgBouncer
(transaction pooling), ``--concurrency`` requests in flight at once, each request
a session that inserts one row with a unique key and commits.  The run grows the
number of processes (``--processes 1,2,3,4``) and reports, per step, the rows
written per second, the errors, whether every row was written exactly once, and
the most connections the PostgreSQL server held at any moment.

Standalone: imports async_orm, SQLAlchemy, psycopg and the standard library.

    # a throwaway primary + PgBouncer (20 server connections), then this script:
    python -m tests.topology -- python benchmarks/scaleout.py --json out.json
    # or against servers of your own (the URL of the bouncer and of the server):
    python benchmarks/scaleout.py --url postgresql+psycopg://app@127.0.0.1:6432/app \\
        --server-url postgresql+psycopg://app@127.0.0.1:5432/app
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_orm


class Base(DeclarativeBase):
    pass


class Written(Base):
    __tablename__ = "scaleout_rows"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)  # a second write fails
    process: Mapped[int]


@dataclass
class ProcessResult:
    process: int
    elapsed: float
    written: int
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Step:
    processes: int
    repeat: int
    elapsed: float
    rows_per_second: float
    written: int
    expected: int
    errors: dict[str, int]
    exactly_once: bool
    peak_server_connections: int


def _conninfo(url: str) -> str:
    """A libpq conninfo for a SQLAlchemy URL (for the checks, outside async_orm)."""
    parsed = sa.make_url(url)
    parts = {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    return " ".join(f"{key}={value}" for key, value in parts.items() if value is not None)


# --------------------------------------------------------------------------
# one application server process


async def _serve(
    url: str, process: int, run: str, requests: int, concurrency: int, pool_size: int
) -> tuple[int, dict[str, int]]:
    engine = async_orm.create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={
            # PgBouncer < 1.21 in transaction mode: no server-side prepared statements
            "prepare_threshold": None,
            # how the sampler finds this run's server connections
            "application_name": f"scaleout-{run}",
        },
    )
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    errors: dict[str, int] = {}
    written = 0
    next_request = iter(range(requests))

    async def client() -> None:
        nonlocal written
        for request in next_request:  # one iterator shared by the clients
            try:
                async with maker() as session, session.begin():
                    session.add(Written(key=f"{run}-{process}-{request}", process=process))
                written += 1
            except Exception as error:  # counted and reported, never hidden
                name = type(error).__name__
                errors[name] = errors.get(name, 0) + 1

    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        await engine.dispose()
    return written, errors


def _process_main(
    url: str,
    process: int,
    run: str,
    requests: int,
    concurrency: int,
    pool_size: int,
    barrier: Any,
    results: Any,
) -> None:
    barrier.wait()  # every process starts writing at once
    start = time.perf_counter()
    written, errors = asyncio.run(_serve(url, process, run, requests, concurrency, pool_size))
    results.put(asdict(ProcessResult(process, time.perf_counter() - start, written, errors)))


# --------------------------------------------------------------------------
# the run


class _ConnectionSampler(threading.Thread):
    """Samples the server's connections of one run (by their application_name,
    which PgBouncer sets on a server connection for each client's transaction)."""

    def __init__(self, server_url: str, run: str) -> None:
        super().__init__(daemon=True)
        self.conninfo = _conninfo(server_url)
        self.application_name = f"scaleout-{run}"
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self.stopping.is_set():
                row = conn.execute(
                    "select count(*) from pg_stat_activity where application_name = %s",
                    (self.application_name,),
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                self.stopping.wait(0.02)


def _check_rows(server_url: str, run: str, expected: int) -> tuple[int, bool]:
    with psycopg.connect(_conninfo(server_url), autocommit=True) as conn:
        row = conn.execute(
            "select count(*), count(distinct key) from scaleout_rows where key like %s",
            (f"{run}-%",),
        ).fetchone()
    assert row is not None
    count, distinct = int(row[0]), int(row[1])
    return count, count == distinct == expected


def run_step(
    url: str,
    server_url: str,
    processes: int,
    requests: int,
    concurrency: int,
    pool_size: int,
    repeat: int = 0,
) -> Step:
    """One measurement: ``processes`` processes, each writing ``requests`` rows."""
    run = uuid.uuid4().hex[:10]
    context = multiprocessing.get_context("spawn")  # no threads copied by fork
    barrier = context.Barrier(processes + 1)
    results = context.Queue()
    children = [
        context.Process(
            target=_process_main,
            args=(url, p, run, requests, concurrency, pool_size, barrier, results),
        )
        for p in range(processes)
    ]
    for child in children:
        child.start()
    sampler = _ConnectionSampler(server_url, run)
    sampler.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    per_process = [ProcessResult(**results.get(timeout=600)) for _ in children]
    elapsed = time.perf_counter() - start
    sampler.stopping.set()
    sampler.join()
    for child in children:
        child.join(timeout=60)
        if child.exitcode != 0:
            raise RuntimeError(f"process {child.name} exited with {child.exitcode}")
    errors: dict[str, int] = {}
    for result in per_process:
        for name, count in result.errors.items():
            errors[name] = errors.get(name, 0) + count
    expected = processes * requests
    written, exactly_once = _check_rows(server_url, run, expected)
    return Step(
        processes=processes,
        repeat=repeat,
        elapsed=elapsed,
        rows_per_second=written / elapsed,
        written=written,
        expected=expected,
        errors=errors,
        exactly_once=exactly_once,
        peak_server_connections=sampler.peak,
    )


def create_table(server_url: str) -> None:
    engine = sa.create_engine(server_url, poolclass=sa.pool.NullPool)
    Base.metadata.create_all(engine)
    engine.dispose()


def _table(steps: list[Step], args: argparse.Namespace) -> str:
    lines = [
        f"{args.concurrency} concurrent requests per process, one row per request, "
        f"client pool {args.pool_size} per process; median of {args.repeat} run(s)",
        "",
        f"{'processes':>9}  {'rows/s':>8}  {'rows':>6}  {'errors':>6}  "
        f"{'exactly once':>12}  {'server conns (peak)':>19}",
    ]
    for processes in sorted({step.processes for step in steps}):
        mine = [step for step in steps if step.processes == processes]
        rate = statistics.median(step.rows_per_second for step in mine)
        errors = sum(sum(step.errors.values()) for step in mine)
        once = all(step.exactly_once for step in mine)
        peak = max(step.peak_server_connections for step in mine)
        lines.append(
            f"{processes:>9}  {rate:>8.0f}  {sum(s.written for s in mine):>6}  {errors:>6}  "
            f"{'yes' if once else 'NO':>12}  {peak:>19}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("ASYNC_ORM_BOUNCER_URL"),
        help="the PgBouncer URL the processes write through (default: $ASYNC_ORM_BOUNCER_URL)",
    )
    parser.add_argument(
        "--server-url",
        default=os.environ.get("ASYNC_ORM_PRIMARY_URL"),
        help="the PostgreSQL server behind it, same database, for the table, the checks and "
        "pg_stat_activity (default: $ASYNC_ORM_PRIMARY_URL)",
    )
    parser.add_argument("--processes", default="1,2,3,4", help="process counts, e.g. 1,2,3,4")
    parser.add_argument("--requests", type=int, default=2000, help="rows written per process")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight")
    parser.add_argument("--pool-size", type=int, default=25, help="client pool per process")
    parser.add_argument("--repeat", type=int, default=3, help="runs per process count")
    parser.add_argument("--json", help="write every step to this file")
    args = parser.parse_args(argv)
    if not args.url or not args.server_url:
        parser.error("give --url and --server-url (or run it through python -m tests.topology)")
    create_table(args.server_url)
    steps = [
        run_step(
            args.url,
            args.server_url,
            int(count),
            args.requests,
            args.concurrency,
            args.pool_size,
            repeat,
        )
        for count in args.processes.split(",")
        for repeat in range(args.repeat)
    ]
    print(_table(steps, args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"args": vars(args), "steps": [asdict(step) for step in steps]}, out, indent=2
            )
    failed = any(step.errors or not step.exactly_once for step in steps)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
