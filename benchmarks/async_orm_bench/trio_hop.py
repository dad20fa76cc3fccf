"""The hop under Trio, side by side with Trio's own thread hand-off.

    python -m async_orm_bench.trio_hop [--calls N] [--repeats R]

One process, one run: the cost of one awaited no-op call through async_orm
(``await session.run_sync(noop)``: the worker hand-off and back) under Trio and under
asyncio, beside ``trio.to_thread.run_sync(noop)`` and ``asyncio.to_thread(noop)``,
which start the same work on a thread of their own pool.  Contestants alternate in
each repeat; the median of the repeats is reported, with the ratio to the library's
own hand-off.  Not a timed test: the suite's smoke run only checks that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import async_orm


def _noop(*_: Any) -> None:
    return None


async def _per_call(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    for _ in range(min(100, calls)):  # warm up: threads started, caches filled
        await call()
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls * 1e6


def _measure_trio(calls: int) -> dict[str, float]:
    import trio

    out: dict[str, float] = {}

    async def main() -> None:
        engine = async_orm.create_async_engine("sqlite://")
        async with async_orm.AsyncSession(engine) as session:
            out["async_orm under Trio"] = await _per_call(lambda: session.run_sync(_noop), calls)
        out["trio.to_thread.run_sync"] = await _per_call(
            lambda: trio.to_thread.run_sync(_noop), calls
        )
        await engine.dispose()

    trio.run(main)
    return out


def _measure_asyncio(calls: int) -> dict[str, float]:
    out: dict[str, float] = {}

    async def main() -> None:
        engine = async_orm.create_async_engine("sqlite://")
        async with async_orm.AsyncSession(engine) as session:
            out["async_orm under asyncio"] = await _per_call(
                lambda: session.run_sync(_noop), calls
            )
        out["asyncio.to_thread"] = await _per_call(lambda: asyncio.to_thread(_noop), calls)
        await engine.dispose()

    asyncio.run(main())
    return out


def measure(calls: int, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        for run in (_measure_trio, _measure_asyncio):
            for name, value in run(calls).items():
                samples.setdefault(name, []).append(value)
    return samples


def report(samples: dict[str, list[float]]) -> str:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    lines = [f"{'hop (no-op call and back)':40} {'us/call':>9} {'vs library':>11}  repeats"]
    pairs = (
        ("async_orm under Trio", "trio.to_thread.run_sync"),
        ("async_orm under asyncio", "asyncio.to_thread"),
    )
    for ours, theirs in pairs:
        for name in (ours, theirs):
            ratio = medians[name] / medians[theirs]
            lines.append(f"{name:40} {medians[name]:9.1f} {ratio:10.2f}x  {len(samples[name])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m async_orm_bench.trio_hop")
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats")
    args = parser.parse_args(argv)
    print(report(measure(args.calls, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
