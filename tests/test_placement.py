"""Thread placement (async_orm.configure(colocate_threads=True)): where the
library's own threads run, and that nothing else is touched.  Not timed."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

import async_orm
from async_orm import _worker

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity"), reason="thread placement is Linux-only"
)

ALLOWED = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


@pytest.fixture(autouse=True)
def _placement_off() -> Iterator[None]:
    yield
    async_orm.configure(colocate_threads=False, pin_event_loop=False, cpus=sorted(ALLOWED))


def _affinity(_: Any = None) -> set[int]:
    return set(os.sched_getaffinity(0))


async def _worker_affinity(engine: async_orm.AsyncEngine) -> set[int]:
    async with async_orm.AsyncSession(engine) as session:
        await session.execute(text("select 1"))
        return await session.run_sync(_affinity)


async def test_workers_serving_a_loop_run_on_its_one_cpu_and_the_loop_is_left_alone(
    engine: async_orm.AsyncEngine,
) -> None:
    loop_before = _affinity()
    settings = async_orm.configure(colocate_threads=True)
    assert settings["colocate_threads"] is True
    placed = await _worker_affinity(engine)
    assert len(placed) == 1 and placed <= ALLOWED
    assert placed == {_worker._placement.cpu_for(asyncio.get_running_loop())}
    assert _affinity() == loop_before, "the event loop's thread was moved"
    seen: list[set[int]] = []
    other = threading.Thread(target=lambda: seen.append(_affinity()))
    other.start()
    other.join()
    assert seen == [ALLOWED], "a thread the library does not own was moved"


async def test_explicit_cpus_are_used(engine: async_orm.AsyncEngine) -> None:
    cpu = max(ALLOWED)
    async_orm.configure(colocate_threads=True, cpus=[cpu])
    assert await _worker_affinity(engine) == {cpu}


def test_cpus_outside_the_allowed_set_are_refused() -> None:
    with pytest.raises(ValueError, match="allowed CPUs"):
        async_orm.configure(cpus=[max(ALLOWED) + 1000])


async def test_turning_it_off_gives_workers_the_whole_set_back(
    engine: async_orm.AsyncEngine,
) -> None:
    async_orm.configure(colocate_threads=True)
    assert len(await _worker_affinity(engine)) == 1
    async_orm.configure(colocate_threads=False)
    assert await _worker_affinity(engine) == ALLOWED


def test_pin_event_loop_pins_only_when_asked(db_url: tuple[str, dict[str, Any]]) -> None:
    url, kw = db_url
    found: dict[str, set[int]] = {}

    async def main() -> None:
        engine = async_orm.create_async_engine(url, **kw)
        found["worker"] = await _worker_affinity(engine)
        found["loop"] = _affinity()
        await engine.dispose()

    def in_thread() -> None:
        asyncio.run(main())

    async_orm.configure(colocate_threads=True, pin_event_loop=True)
    thread = threading.Thread(target=in_thread)  # its affinity dies with it
    thread.start()
    thread.join()
    assert found["loop"] == found["worker"] and len(found["loop"]) == 1


def test_processes_and_loops_spread_over_the_cpus() -> None:
    cpus = (0, 1, 2, 3)
    chosen = {_worker._Placement.choose(pid, 0, cpus) for pid in range(1000, 1004)}
    assert chosen == set(cpus)
    assert _worker._Placement.choose(7, 0, cpus) != _worker._Placement.choose(7, 1, cpus)


def test_a_no_op_without_sched_setaffinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_setaffinity")
    settings = async_orm.configure(colocate_threads=True)
    assert settings["supported"] is False and settings["colocate_threads"] is False


def test_free_threaded_python_is_detected_and_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with pytest.warns(RuntimeWarning, match="free-threaded"):
        settings = async_orm.configure(colocate_threads=True)
    assert settings["colocate_threads"] is False
