"""Where the time of one async_orm call goes: loop-thread CPU, worker CPU, and the wait.

    python benchmarks/profile_hotpath.py [--url URL] [--ops 5000] [--cprofile]

For a primary-key ``get``, an insert+commit request and a no-op hop it prints the wall time
per call next to the CPU time the event-loop thread and the worker thread spent on it
(``time.thread_time``); what is left is thread wake-up latency (the two threads are idle,
waiting for each other). ``--cprofile`` adds the top functions on the loop thread and on
the worker thread. Not a benchmark of peers: see ``python -m async_orm_bench`` for that.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _stats(prof: cProfile.Profile, title: str, n: int = 14) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    text = out.getvalue()
    start = text.find("   ncalls")
    return f"--- {title}\n{text[start:]}"


async def profile(url: str, ops: int, use_cprofile: bool) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    import async_orm
    from async_orm_bench.models import Insert, Item

    engine = async_orm.create_async_engine(url, pool_size=10, max_overflow=0, pool_timeout=2)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    sync_engine = create_engine(url)

    def report(name: str, wall: float, loop_cpu: float, worker_cpu: float) -> None:
        us = 1e6 / ops
        rest = wall - loop_cpu - worker_cpu
        print(
            f"{name:<28} wall {wall * us:8.1f} us   loop CPU {loop_cpu * us:7.1f}   "
            f"worker CPU {worker_cpu * us:7.1f}   waiting/wake-up {rest * us:7.1f}"
        )

    async def measure(name: str, session: Any, step: Callable[[int], Awaitable[Any]]) -> None:
        for i in range(min(ops, 500)):
            await step(i)
        prof_loop = cProfile.Profile() if use_cprofile else None
        prof_worker = cProfile.Profile() if use_cprofile else None
        if prof_worker is not None:
            await session.run_sync(lambda s: prof_worker.enable())
        w0 = await session.run_sync(lambda s: time.thread_time())
        c0, t0 = time.thread_time(), time.perf_counter()
        if prof_loop is not None:
            prof_loop.enable()
        for i in range(ops):
            await step(i)
        if prof_loop is not None:
            prof_loop.disable()
        wall, loop_cpu = time.perf_counter() - t0, time.thread_time() - c0
        w1 = await session.run_sync(lambda s: time.thread_time())
        if prof_worker is not None:
            await session.run_sync(lambda s: prof_worker.disable())
        report(name, wall, loop_cpu, w1 - w0)
        if prof_loop is not None and prof_worker is not None:
            print(_stats(prof_loop, f"{name}: loop thread"))
            print(_stats(prof_worker, f"{name}: worker thread"))

    # the same work, sync, for reference: with and without async_orm's Session listeners
    from async_orm_bench.measure import without_async_orm_session_listeners

    def sync_gets() -> tuple[float, float]:
        with Session(sync_engine) as s:
            for i in range(500):
                s.get(Item, i % 1000 + 1)
            c0, t0 = time.thread_time(), time.perf_counter()
            for i in range(ops):
                s.get(Item, i % 1000 + 1)
            return time.perf_counter() - t0, time.thread_time() - c0

    report("sync Session.get", *sync_gets(), 0.0)
    with without_async_orm_session_listeners() as n:
        report(f"  same, {n} guard listeners off", *sync_gets(), 0.0)

    async with maker() as session:
        await measure("AsyncSession.get", session, lambda i: session.get(Item, i % 1000 + 1))
        await measure("run_sync(no-op) = one hop", session, lambda i: session.run_sync(_noop))

    # insert + commit, session per request: the worker changes per request, so time it whole
    async def request(i: int) -> None:
        async with maker() as s:
            s.add(Insert(name="p", value=i))
            await s.commit()

    for i in range(200):
        await request(i)
    c0, t0 = time.thread_time(), time.perf_counter()
    for i in range(ops // 5):
        await request(i)
    n = ops // 5
    print(
        f"{'insert+commit request':<28} wall {(time.perf_counter() - t0) / n * 1e6:8.1f} us   "
        f"loop CPU {(time.thread_time() - c0) / n * 1e6:7.1f}"
    )

    with Session(sync_engine) as s:
        c0, t0 = time.thread_time(), time.perf_counter()
        for i in range(n):
            with Session(sync_engine) as s:
                s.add(Insert(name="p", value=i))
                s.commit()
        print(f"{'sync insert+commit':<28} wall {(time.perf_counter() - t0) / n * 1e6:8.1f} us")

    # the floor: the cheapest possible hop, SimpleQueue + call_soon_threadsafe
    import queue
    import threading

    loop = asyncio.get_running_loop()
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def worker() -> None:
        while (fut := q.get()) is not None:
            loop.call_soon_threadsafe(fut.set_result, None)

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    for _ in range(500):
        f = loop.create_future()
        q.put(f)
        await f
    t0 = time.perf_counter()
    for _ in range(ops):
        f = loop.create_future()
        q.put(f)
        await f
    floor = (time.perf_counter() - t0) / ops * 1e6
    print(f"{'bare hop (queue+cst), floor':<28} wall {floor:8.1f} us")
    q.put(None)
    t0 = time.perf_counter()
    for _ in range(ops):
        await asyncio.to_thread(_noop, None)
    print(
        f"{'asyncio.to_thread(no-op)':<28} wall {(time.perf_counter() - t0) / ops * 1e6:8.1f} us"
    )
    await engine.dispose()
    sync_engine.dispose()


def _noop(_: Any) -> None:
    return None


def main() -> int:
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="default: a throwaway SQLite file (WAL, 1,000 rows)")
    p.add_argument("--ops", type=int, default=5000)
    p.add_argument("--cprofile", action="store_true")
    args = p.parse_args()
    from async_orm_bench import models

    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.mkdtemp(prefix="async_orm-profile-")
        url = "sqlite:///" + os.path.join(tmp, "p.db")
    url = models.sync_url(url).render_as_string(hide_password=False)
    models.prepare(url, 1000, 0, "wal" if url.startswith("sqlite") else "")
    print(f"{url.split('@')[-1]}, {args.ops} calls each, load avg {os.getloadavg()[0]:.2f}")
    asyncio.run(profile(url, args.ops, args.cprofile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
