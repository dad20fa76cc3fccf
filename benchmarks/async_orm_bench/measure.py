"""One measurement: one contestant, one workload, a fresh engine, a warm-up, a timed part.

This is the code that runs inside the measurement subprocess (see :mod:`.runner`). It knows
nothing about repeats, medians or ratios; it returns one JSON-ready ``dict`` whose ``value``
is the figure of merit (``higher_is_better`` says which way is good) plus workload-specific
extras (latency percentiles, errors, peak threads, peak memory, hops).

The workloads are written three times, once per contestant family, side by side so that a
reader can check they do the same work:

* ``_Sync*``: plain sync Session;
* ``_Async*``: the ``sqlalchemy.ext.asyncio`` API, shared by async_orm and SQLAlchemy's own
  extension (async_orm mirrors it name for name);
* ``_Offload*``: a sync Session with every awaited call sent through ``asyncio.to_thread`` or
  ``asgiref.sync.sync_to_async``, exactly where the async code has an ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import math
import os
import resource
import statistics
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from sqlalchemy import Select, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .contestants import BY_NAME, Contestant
from .models import Insert, Item, StreamRow, sync_url

Result = dict[str, Any]
Offload = Callable[..., Awaitable[Any]]

WORKLOADS = (
    "pk_get",
    "select_10",
    "insert_commit",
    "bulk_insert",
    "select_many",
    "stream",
    "concurrent",
    "hop",
    "hops_per_request",
)


@dataclass(frozen=True)
class Spec:
    """What to measure. Picklable: it crosses into the measurement subprocess."""

    workload: str
    contestant: str
    url: str
    """Database URL with its password (never printed; see ``runner``)."""
    ops: int
    """Timed operations (requests in total for ``concurrent``)."""
    warmup: int
    size: int = 0
    """Rows for ``select_many``/``bulk_insert``/``stream``; N clients for ``concurrent``."""
    rows: int = 10_000
    """Rows in ``bench_item`` (the primary keys cycled through)."""
    pool_size: int = 10
    max_overflow: int = 0
    pool_timeout: float = 2.0
    deadline: float = 30.0
    """``concurrent`` only: stop waiting after this many seconds and report it as stalled."""
    options: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _pk(i: int, spec: Spec) -> int:
    return i % spec.rows + 1


def _select_10(i: int, spec: Spec) -> Select[Any]:
    start = i % max(1, spec.rows - 10)
    return select(Item).where(Item.id > start).order_by(Item.id).limit(10)


def _select_many(spec: Spec) -> Select[Any]:
    return select(Item).order_by(Item.id).limit(spec.size)


def _stream_stmt() -> Any:  # Select of 3 columns; its generics differ in SA 2.0 and 2.1
    return select(StreamRow.id, StreamRow.name, StreamRow.value)


#: How every contestant streams: ``yield_per`` (which implies ``stream_results``) is what the
#: ORM needs to fetch in chunks; without it ``Session.execute`` and ``AsyncSession.stream``
#: buffer the whole result first.
STREAM_OPTIONS = {"yield_per": 1000}


def _rate(ops: int, elapsed: float, unit: str = "ops/s", **extra: Any) -> Result:
    return {
        "value": ops / elapsed if elapsed > 0 else math.inf,
        "unit": unit,
        "higher_is_better": True,
        "elapsed": elapsed,
        "ops": ops,
        **extra,
    }


def _pool_kw(spec: Spec) -> dict[str, Any]:
    return {
        "pool_size": spec.pool_size,
        "max_overflow": spec.max_overflow,
        "pool_timeout": spec.pool_timeout,
    }


def _configure(engine: Any, spec: Spec) -> None:
    """Per-connection settings every contestant gets alike (SQLite ``synchronous``)."""
    pragma = spec.options.get("sqlite_synchronous")
    if pragma and engine.dialect.name == "sqlite":

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA synchronous={pragma}")
            cursor.close()

        event.listen(engine, "connect", on_connect)


def _noop(*_: Any) -> None:
    return None


class Memory:
    """Current and peak resident memory of this process (Linux ``/proc``, else ``resource``).

    :meth:`reset` restarts the peak (``/proc/self/clear_refs``), so a measurement sees its own
    peak and not an earlier one, and returns the resident size it starts from.
    """

    def __init__(self) -> None:
        self.exact = False

    @staticmethod
    def status() -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("VmRSS", "VmHWM", "Threads"):
                        out[key] = int(rest.split()[0])
        except OSError:
            pass
        return out

    def rss(self) -> int:
        kb = self.status().get("VmRSS")
        if kb is not None:
            return kb * 1024
        return self._maxrss()

    @staticmethod
    def _maxrss() -> int:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

    def reset(self) -> int:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        return self.rss()

    def peak(self) -> int:
        if self.exact:
            kb = self.status().get("VmHWM")
            if kb is not None:
                return kb * 1024
        return self._maxrss()


def thread_placement() -> dict[str, Any]:
    """Where this process's threads may run and last ran (Linux ``/proc``; else ``{}``).

    ``{"loop": {...}, "workers": {"allowed": [...], "last_cpu": [...], "count": n}}``: the
    ``Cpus_allowed_list`` of each thread and the CPU it last ran on (field 39 of its
    ``stat``). Threads are found by their Python name (``async_orm-worker-*`` for the
    workers), through ``native_id``: CPython before 3.14 does not give the OS thread its
    Python name, so ``/proc/<pid>/task/*/comm`` shows ``python`` for every one of them.
    """
    if not os.path.isdir("/proc/self/task"):
        return {}

    def one(tid: int | None) -> tuple[str, int] | None:
        if tid is None:
            return None
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                allowed = next(
                    line.split(":", 1)[1].strip()
                    for line in f
                    if line.startswith("Cpus_allowed_list:")
                )
            with open(f"/proc/self/task/{tid}/stat") as f:
                last = int(f.read().rsplit(")", 1)[1].split()[36])
        except (OSError, StopIteration, ValueError, IndexError):
            return None
        return allowed, last

    out: dict[str, Any] = {"pid": os.getpid()}
    me = one(threading.get_native_id())
    if me is not None:
        out["loop"] = {"allowed": me[0], "last_cpu": me[1]}
    seen = [
        one(t.native_id) for t in threading.enumerate() if t.name.startswith("async_orm-worker")
    ]
    got = [x for x in seen if x is not None]
    out["workers"] = {
        "count": len(got),
        "allowed": sorted({a for a, _ in got}),
        "last_cpu": sorted({c for _, c in got}),
    }
    return out


def os_threads() -> int:
    n = Memory.status().get("Threads")
    return n if n is not None else threading.active_count()


class Sampler(threading.Thread):
    """Polls the OS thread count while a concurrent workload runs (itself not counted)."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.interval = interval
        self.peak_threads = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.peak_threads = max(self.peak_threads, os_threads() - 1)
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_threads


class Requests:
    """Latencies and errors of the ``concurrent`` workload's requests."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def summary(
        self, spec: Spec, elapsed: float, expected: int, peak_threads: int, mem: Memory, rss0: int
    ) -> Result:
        ok = len(self.latencies)
        errors = sum(self.errors.values())
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, math.ceil(p * len(lat)) - 1)] * 1000.0

        peak = mem.peak()
        return _rate(
            ok,
            elapsed,
            "req/s",
            clients=spec.size,
            requests=expected,
            completed=ok + errors,
            errors=errors,
            error_types=dict(self.errors),
            incomplete=expected - ok - errors,
            stalled=ok + errors < expected,
            p50_ms=pct(0.50),
            p99_ms=pct(0.99),
            mean_ms=statistics.fmean(lat) * 1000.0 if lat else None,
            peak_threads=peak_threads,
            peak_rss_mb=peak / 2**20,
            rss_growth_mb=(peak - rss0) / 2**20,
        )


# --------------------------------------------------------------------------- sync family


def _sync_request(maker: sessionmaker[Session], pk: int) -> None:
    with maker() as s:
        item = s.get(Item, pk)
        assert item is not None
        item.counter += 1
        s.commit()


class _Sync:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.engine = create_engine(sync_url(spec.url), **_pool_kw(spec))
        _configure(self.engine, spec)
        self.maker = sessionmaker(self.engine, expire_on_commit=False)

    def run(self) -> Result:
        try:
            fn: Callable[[], Result] = getattr(self, self.spec.workload)
            return fn()
        finally:
            self.engine.dispose()

    def pk_get(self) -> Result:
        spec = self.spec
        with self.maker() as s:
            for i in range(spec.warmup):
                s.get(Item, _pk(i, spec))
            gc.collect()
            t0 = perf_counter()
            for i in range(spec.warmup, spec.warmup + spec.ops):
                s.get(Item, _pk(i, spec))
            return _rate(spec.ops, perf_counter() - t0)

    def select_10(self) -> Result:
        spec = self.spec
        with self.maker() as s:
            for i in range(spec.warmup):
                s.execute(_select_10(i, spec)).scalars().all()
            gc.collect()
            t0 = perf_counter()
            for i in range(spec.warmup, spec.warmup + spec.ops):
                s.execute(_select_10(i, spec)).scalars().all()
            return _rate(spec.ops, perf_counter() - t0)

    def _insert(self, i: int) -> None:
        with self.maker() as s:
            s.add(Insert(name="insert", value=i))
            s.commit()

    def insert_commit(self) -> Result:
        spec = self.spec
        for i in range(spec.warmup):
            self._insert(i)
        gc.collect()
        t0 = perf_counter()
        for i in range(spec.ops):
            self._insert(i)
        return _rate(spec.ops, perf_counter() - t0)

    def _bulk(self) -> None:
        with self.maker() as s:
            s.add_all([Insert(name="bulk", value=j) for j in range(self.spec.size)])
            s.commit()

    def bulk_insert(self) -> Result:
        spec = self.spec
        for _ in range(spec.warmup):
            self._bulk()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            self._bulk()
        el = perf_counter() - t0
        return _rate(spec.ops, el, rows_per_s=spec.ops * spec.size / el)

    def _many(self) -> None:
        with self.maker() as s:
            rows = s.execute(_select_many(self.spec)).scalars().all()
            assert len(rows) == self.spec.size, len(rows)

    def select_many(self) -> Result:
        spec = self.spec
        for _ in range(spec.warmup):
            self._many()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            self._many()
        el = perf_counter() - t0
        return _rate(spec.ops, el, rows_per_s=spec.ops * spec.size / el)

    def _stream(self) -> int:
        n = 0
        with self.maker() as s:
            for _row in s.execute(_stream_stmt(), execution_options=STREAM_OPTIONS):
                n += 1
        return n

    def stream(self) -> Result:
        with self.maker() as s:  # warm-up: compile, connect
            s.execute(_stream_stmt().limit(self.spec.warmup)).all()
        return _measure_stream(self.spec, self._stream)

    def concurrent(self) -> Result:
        spec = self.spec
        n = spec.size
        per = max(1, math.ceil(spec.ops / n))
        warm = [
            threading.Thread(target=_sync_request, args=(self.maker, _pk(i, spec)))
            for i in range(min(n, spec.pool_size))
        ]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        reqs = Requests()
        lock = threading.Lock()

        def client(c: int) -> None:
            for j in range(per):
                t = perf_counter()
                try:
                    _sync_request(self.maker, _pk(c * per + j, spec))
                except Exception as exc:
                    with lock:
                        reqs.errors[type(exc).__name__] += 1
                else:
                    reqs.latencies.append(perf_counter() - t)

        mem = Memory()
        gc.collect()
        rss0 = mem.reset()
        sampler = Sampler()
        sampler.start()
        t0 = perf_counter()
        # a thread per client: the classic threaded server, created inside the timed part
        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(n)]
        for t in threads:
            t.start()
        end = t0 + spec.deadline
        for t in threads:
            t.join(max(0.0, end - perf_counter()))
        elapsed = perf_counter() - t0
        return reqs.summary(spec, elapsed, n * per, sampler.stop(), mem, rss0)


def _measure_stream(spec: Spec, fn: Callable[[], int]) -> Result:
    mem = Memory()
    rss0 = mem.reset()
    t0 = perf_counter()
    n = fn()
    el = perf_counter() - t0
    peak = mem.peak()
    assert n == spec.size, (n, spec.size)
    return _rate(
        n,
        el,
        "rows/s",
        peak_growth_mb=(peak - rss0) / 2**20,
        peak_rss_mb=peak / 2**20,
        exact_peak=mem.exact,
    )


async def _measure_stream_async(spec: Spec, fn: Callable[[], Awaitable[int]]) -> Result:
    mem = Memory()
    rss0 = mem.reset()
    t0 = perf_counter()
    n = await fn()
    el = perf_counter() - t0
    peak = mem.peak()
    assert n == spec.size, (n, spec.size)
    return _rate(
        n,
        el,
        "rows/s",
        peak_growth_mb=(peak - rss0) / 2**20,
        peak_rss_mb=peak / 2**20,
        exact_peak=mem.exact,
    )


async def _concurrent(
    spec: Spec, request: Callable[[int], Awaitable[None]], *, warm: bool = True
) -> Result:
    """N client tasks, each making its share of requests one after the other."""
    n = spec.size
    per = max(1, math.ceil(spec.ops / n))
    if warm:
        await asyncio.gather(*(request(_pk(i, spec)) for i in range(min(n, spec.pool_size))))
    reqs = Requests()

    async def client(c: int) -> None:
        for j in range(per):
            t = perf_counter()
            try:
                await request(_pk(c * per + j, spec))
            except Exception as exc:
                reqs.errors[type(exc).__name__] += 1
            else:
                reqs.latencies.append(perf_counter() - t)

    mem = Memory()
    gc.collect()
    rss0 = mem.reset()
    sampler = Sampler()
    sampler.start()
    t0 = perf_counter()
    tasks = [asyncio.create_task(client(c)) for c in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=spec.deadline)
    elapsed = perf_counter() - t0
    peak_threads = sampler.stop()
    result = reqs.summary(spec, elapsed, n * per, peak_threads, mem, rss0)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=spec.pool_timeout + 5)
    return result


# --------------------------------------------------------------------------- async API family


class _Async:
    """async_orm and ``sqlalchemy.ext.asyncio``: the same code, a different module."""

    def __init__(self, spec: Spec, contestant: Contestant) -> None:
        self.spec = spec
        self.is_async_orm = contestant.is_async_orm
        if contestant.is_async_orm:
            self.mod: Any = importlib.import_module("async_orm")
            url: Any = sync_url(spec.url)
        else:
            self.mod = importlib.import_module("sqlalchemy.ext.asyncio")
            url = make_url(spec.url).set(drivername=contestant.driver)
        self.url = url

    async def run(self) -> Result:
        self.engine: Any = self.mod.create_async_engine(self.url, **_pool_kw(self.spec))
        _configure(self.engine.sync_engine, self.spec)
        self.maker: Any = self.mod.async_sessionmaker(self.engine, expire_on_commit=False)
        try:
            fn: Callable[[], Awaitable[Result]] = getattr(self, self.spec.workload)
            result = await fn()
            if self.is_async_orm:  # the worker threads are still alive (idle) here
                result["placement"] = thread_placement()
            return result
        finally:
            await self.engine.dispose()

    async def pk_get(self) -> Result:
        spec = self.spec
        async with self.maker() as s:
            for i in range(spec.warmup):
                await s.get(Item, _pk(i, spec))
            gc.collect()
            t0 = perf_counter()
            for i in range(spec.warmup, spec.warmup + spec.ops):
                await s.get(Item, _pk(i, spec))
            return _rate(spec.ops, perf_counter() - t0)

    async def select_10(self) -> Result:
        spec = self.spec
        async with self.maker() as s:
            for i in range(spec.warmup):
                (await s.execute(_select_10(i, spec))).scalars().all()
            gc.collect()
            t0 = perf_counter()
            for i in range(spec.warmup, spec.warmup + spec.ops):
                (await s.execute(_select_10(i, spec))).scalars().all()
            return _rate(spec.ops, perf_counter() - t0)

    async def _insert(self, i: int) -> None:
        async with self.maker() as s:
            s.add(Insert(name="insert", value=i))
            await s.commit()

    async def insert_commit(self) -> Result:
        spec = self.spec
        for i in range(spec.warmup):
            await self._insert(i)
        gc.collect()
        t0 = perf_counter()
        for i in range(spec.ops):
            await self._insert(i)
        return _rate(spec.ops, perf_counter() - t0)

    async def _bulk(self) -> None:
        async with self.maker() as s:
            s.add_all([Insert(name="bulk", value=j) for j in range(self.spec.size)])
            await s.commit()

    async def bulk_insert(self) -> Result:
        spec = self.spec
        for _ in range(spec.warmup):
            await self._bulk()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            await self._bulk()
        el = perf_counter() - t0
        return _rate(spec.ops, el, rows_per_s=spec.ops * spec.size / el)

    async def _many(self) -> None:
        async with self.maker() as s:
            rows = (await s.execute(_select_many(self.spec))).scalars().all()
            assert len(rows) == self.spec.size, len(rows)

    async def select_many(self) -> Result:
        spec = self.spec
        for _ in range(spec.warmup):
            await self._many()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            await self._many()
        el = perf_counter() - t0
        return _rate(spec.ops, el, rows_per_s=spec.ops * spec.size / el)

    async def _stream(self) -> int:
        n = 0
        async with self.maker() as s:
            result = await s.stream(_stream_stmt(), execution_options=STREAM_OPTIONS)
            async for _row in result:
                n += 1
        return n

    async def stream(self) -> Result:
        async with self.maker() as s:
            (await s.execute(_stream_stmt().limit(self.spec.warmup))).all()
        return await _measure_stream_async(self.spec, self._stream)

    async def _request(self, pk: int) -> None:
        async with self.maker() as s:
            item = await s.get(Item, pk)
            assert item is not None
            item.counter += 1
            await s.commit()

    async def concurrent(self) -> Result:
        return await _concurrent(self.spec, self._request)

    async def hops_per_request(self) -> Result:
        steps: Counter[str] = Counter()
        with HopCounter() as hops:
            for i in range(self.spec.warmup + self.spec.ops):
                if i == self.spec.warmup:
                    steps.clear()
                c = hops.count
                s = self.maker()
                await s.__aenter__()
                steps["open"] += hops.count - c
                c = hops.count
                item = await s.get(Item, _pk(i, self.spec))
                steps["get"] += hops.count - c
                c = hops.count
                item.counter += 1
                steps["update"] += hops.count - c
                c = hops.count
                await s.commit()
                steps["commit"] += hops.count - c
                c = hops.count
                await s.__aexit__(None, None, None)
                steps["close"] += hops.count - c
        return _hops_result(self.spec, steps)


# --------------------------------------------------------------------------- offload family


def _offloader(name: str) -> Offload:
    if name == "to_thread":
        return asyncio.to_thread
    from asgiref.sync import sync_to_async

    def call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return sync_to_async(fn)(*args, **kwargs)

    return call


def _scalars_all(s: Session, stmt: Select[Any]) -> list[Any]:
    return list(s.execute(stmt).scalars().all())


class _Offload:
    """A sync Session; each call that the async API awaits goes through ``off`` instead."""

    def __init__(self, spec: Spec, contestant: Contestant) -> None:
        self.spec = spec
        self.off = _offloader(contestant.name)
        self.engine = create_engine(sync_url(spec.url), **_pool_kw(spec))
        _configure(self.engine, spec)
        self.maker = sessionmaker(self.engine, expire_on_commit=False)

    async def run(self) -> Result:
        try:
            fn: Callable[[], Awaitable[Result]] = getattr(self, self.spec.workload)
            return await fn()
        finally:
            await self.off(self.engine.dispose)

    async def pk_get(self) -> Result:
        spec, off = self.spec, self.off
        s = self.maker()
        try:
            for i in range(spec.warmup):
                await off(s.get, Item, _pk(i, spec))
            gc.collect()
            t0 = perf_counter()
            for i in range(spec.warmup, spec.warmup + spec.ops):
                await off(s.get, Item, _pk(i, spec))
            return _rate(spec.ops, perf_counter() - t0)
        finally:
            await off(s.close)

    async def select_10(self) -> Result:
        spec, off = self.spec, self.off
        s = self.maker()
        try:
            for i in range(spec.warmup):
                await off(_scalars_all, s, _select_10(i, spec))
            gc.collect()
            t0 = perf_counter()
            for i in range(spec.warmup, spec.warmup + spec.ops):
                await off(_scalars_all, s, _select_10(i, spec))
            return _rate(spec.ops, perf_counter() - t0)
        finally:
            await off(s.close)

    async def _insert(self, i: int) -> None:
        s = self.maker()
        try:
            s.add(Insert(name="insert", value=i))
            await self.off(s.commit)
        finally:
            await self.off(s.close)

    async def insert_commit(self) -> Result:
        spec = self.spec
        for i in range(spec.warmup):
            await self._insert(i)
        gc.collect()
        t0 = perf_counter()
        for i in range(spec.ops):
            await self._insert(i)
        return _rate(spec.ops, perf_counter() - t0)

    async def _bulk(self) -> None:
        s = self.maker()
        try:
            s.add_all([Insert(name="bulk", value=j) for j in range(self.spec.size)])
            await self.off(s.commit)
        finally:
            await self.off(s.close)

    async def bulk_insert(self) -> Result:
        spec = self.spec
        for _ in range(spec.warmup):
            await self._bulk()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            await self._bulk()
        el = perf_counter() - t0
        return _rate(spec.ops, el, rows_per_s=spec.ops * spec.size / el)

    async def _many(self) -> None:
        s = self.maker()
        try:
            rows = await self.off(_scalars_all, s, _select_many(self.spec))
            assert len(rows) == self.spec.size, len(rows)
        finally:
            await self.off(s.close)

    async def select_many(self) -> Result:
        spec = self.spec
        for _ in range(spec.warmup):
            await self._many()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            await self._many()
        el = perf_counter() - t0
        return _rate(spec.ops, el, rows_per_s=spec.ops * spec.size / el)

    async def _stream(self) -> int:
        off = self.off
        n = 0
        s = self.maker()
        try:
            result = await off(s.execute, _stream_stmt(), execution_options=STREAM_OPTIONS)
            while chunk := await off(result.fetchmany, 1000):
                n += len(chunk)
        finally:
            await off(s.close)
        return n

    async def stream(self) -> Result:
        s = self.maker()
        try:
            await self.off(lambda: s.execute(_stream_stmt().limit(self.spec.warmup)).all())
        finally:
            await self.off(s.close)
        return await _measure_stream_async(self.spec, self._stream)

    async def _request(self, pk: int) -> None:
        s = self.maker()
        try:
            item = await self.off(s.get, Item, pk)
            assert item is not None
            item.counter += 1
            await self.off(s.commit)
        finally:
            await self.off(s.close)

    async def concurrent(self) -> Result:
        return await _concurrent(self.spec, self._request)

    async def hops_per_request(self) -> Result:
        steps: Counter[str] = Counter()
        off = self.off
        with HopCounter() as hops:
            for i in range(self.spec.warmup + self.spec.ops):
                if i == self.spec.warmup:
                    steps.clear()
                c = hops.count
                s = self.maker()
                steps["open"] += hops.count - c
                c = hops.count
                item = await off(s.get, Item, _pk(i, self.spec))
                steps["get"] += hops.count - c
                c = hops.count
                item.counter += 1
                steps["update"] += hops.count - c
                c = hops.count
                await off(s.commit)
                steps["commit"] += hops.count - c
                c = hops.count
                await off(s.close)
                steps["close"] += hops.count - c
        return _hops_result(self.spec, steps)


# --------------------------------------------------------------------------- hops


class HopCounter:
    """Counts thread hops back to the running loop: ``call_soon_threadsafe`` from another thread.

    Every thread-to-loop handoff in asyncio (``run_in_executor``, ``to_thread``, asgiref,
    aiosqlite, async_orm's worker) ends in one ``loop.call_soon_threadsafe``, so counting the
    calls made from other threads counts the hops without knowing the library's internals.
    """

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> HopCounter:
        loop = asyncio.get_running_loop()
        self._loop = loop
        orig = loop.call_soon_threadsafe
        loop_thread = threading.get_ident()

        def counting(callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
            if threading.get_ident() != loop_thread:
                self.count += 1
            return orig(callback, *args, context=context)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        del self._loop.call_soon_threadsafe


def _hops_result(spec: Spec, steps: Counter[str]) -> Result:
    total = sum(steps.values())
    return {
        "value": total / spec.ops,
        "unit": "hops/request",
        "higher_is_better": False,
        "ops": spec.ops,
        "steps": {k: v / spec.ops for k, v in steps.items()},
    }


def _sync_hops(spec: Spec) -> Result:
    steps = Counter({"open": 0, "get": 0, "update": 0, "commit": 0, "close": 0})
    return _hops_result(spec, steps)


async def _hop(spec: Spec, contestant: Contestant) -> Result:
    """Per-call cost of the hop itself: a no-op sent to the other side and back, no database."""
    call: Callable[[], Awaitable[Any]]
    close: Callable[[], Awaitable[Any]] | None = None
    if contestant.family == "async_api":
        if contestant.is_async_orm:
            mod: Any = importlib.import_module("async_orm")
        else:
            mod = importlib.import_module("sqlalchemy.ext.asyncio")
        session = mod.AsyncSession()
        run_sync = session.run_sync

        def call() -> Awaitable[Any]:
            return run_sync(_noop)  # type: ignore[no-any-return]

        close = session.close
    elif contestant.name == "to_thread":

        def call() -> Awaitable[Any]:
            return asyncio.to_thread(_noop)

    else:
        from asgiref.sync import sync_to_async

        def call() -> Awaitable[Any]:
            return sync_to_async(_noop)()

    try:
        for _ in range(spec.warmup):
            await call()
        gc.collect()
        t0 = perf_counter()
        for _ in range(spec.ops):
            await call()
        el = perf_counter() - t0
    finally:
        if close is not None:
            await close()
    return {
        "value": el / spec.ops * 1e6,
        "unit": "us/call",
        "higher_is_better": False,
        "elapsed": el,
        "ops": spec.ops,
    }


def _sync_hop(spec: Spec) -> Result:
    t0 = perf_counter()
    for _ in range(spec.ops):
        _noop()
    el = perf_counter() - t0
    return {
        "value": el / spec.ops * 1e6,
        "unit": "us/call",
        "higher_is_better": False,
        "elapsed": el,
        "ops": spec.ops,
    }


# --------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def without_async_orm_session_listeners() -> Iterator[int]:
    """Take off any listeners async_orm put on the ``Session`` class, for the block.

    The peers (the sync limit, SQLAlchemy's asyncio, the offloaders) are measured as
    plain SQLAlchemy: their measurements run inside this block. async_orm's loop guard
    now listens only on the private subclass it instantiates for its own sessions, so
    this normally finds nothing (yields 0); it stays as a check that plain sessions
    carry none of async_orm's listeners. Yields how many were taken off.
    """
    from sqlalchemy.orm import SessionEvents

    names = [n for n in dir(SessionEvents) if not n.startswith("_")]
    removed: list[tuple[str, Callable[..., Any]]] = []
    for modname, module in list(sys.modules.items()):
        if module is None or modname.split(".")[0] != "async_orm":
            continue
        for obj in list(vars(module).values()):
            if not callable(obj) or getattr(obj, "__module__", None) != modname:
                continue
            for name in names:
                try:
                    if event.contains(Session, name, obj):
                        event.remove(Session, name, obj)
                        removed.append((name, obj))
                except Exception:  # not an event of Session: nothing to take off
                    continue
    try:
        yield len(removed)
    finally:
        for name, fn in removed:
            event.listen(Session, name, fn)


def _import_async_orm_from(tree: str) -> None:
    """Make ``import async_orm`` load the package in ``tree`` (the --baseline revision)."""

    def tree_of(mod: Any) -> str:  # .../TREE/async_orm/__init__.py -> .../TREE
        return os.path.dirname(os.path.dirname(mod.__file__ or ""))

    loaded = sys.modules.get("async_orm")
    if loaded is not None:
        if tree_of(loaded) == tree:
            return
        raise RuntimeError(
            f"async_orm is already imported from {loaded.__file__}: the baseline needs a "
            "fresh process (--isolation process)"
        )
    sys.path.insert(0, tree)
    mod = importlib.import_module("async_orm")
    assert tree_of(mod) == tree, mod.__file__


def run(spec: Spec) -> Result:
    """Run one measurement in this process and return its result."""
    contestant = BY_NAME[spec.contestant]
    if spec.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {spec.workload!r}; choose from {WORKLOADS}")
    cpus = spec.options.get("cpus")
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)  # this process and the threads it starts
    if contestant.name == "async_orm_baseline":
        _import_async_orm_from(spec.options["baseline"])
    if contestant.is_async_orm:
        if contestant.configure:  # thread placement: before any engine or loop exists
            importlib.import_module("async_orm").configure(**dict(contestant.configure))
        result = _run(spec, contestant)
        result["module"] = sys.modules["async_orm"].__file__  # which async_orm was measured
        return result
    with without_async_orm_session_listeners():
        return _run(spec, contestant)


def _run(spec: Spec, contestant: Contestant) -> Result:
    if contestant.family == "sync":
        if spec.workload == "hop":
            return _sync_hop(spec)
        if spec.workload == "hops_per_request":
            return _sync_hops(spec)
        return _Sync(spec).run()
    if spec.workload == "hop":
        return asyncio.run(_hop(spec, contestant))
    runner: _Async | _Offload
    runner = (
        _Async(spec, contestant)
        if contestant.family == "async_api"
        else _Offload(spec, contestant)
    )
    return asyncio.run(runner.run())


def child_main(spec: Spec, conn: Any) -> None:
    """Subprocess entry: measure, send the result (or the error) back, and leave at once.

    Leaving with ``os._exit`` means threads stuck in a stalled ``concurrent`` run (a pool
    checkout waiting out its timeout) cannot hold the measurement hostage.
    """
    code = 0
    try:
        result: Result = {"ok": True, "result": run(spec)}
    except BaseException as exc:  # report everything, including KeyboardInterrupt
        import traceback

        result = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        code = 1
    try:
        conn.send(result)
        conn.close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
