"""Model-based fuzzing: one AsyncSession shared by several tasks behaves like a
plain sync Session given the same calls in submission order.

Hypothesis draws a sequence of session operations (add, flush, commit, rollback,
get, delete, begin_nested, execute) cut into batches.  The operations of a batch
are issued at once, each from a task of its own, onto one AsyncSession; the
model runs the same operations one after the other on a sync Session of a
plain SQLAlchemy engine.  Both start from the same rows; their per-operation
results (values, or the type of the error) and the final table contents must
be equal.

Objects: ``delete(k)`` deletes the object last returned for key ``k`` by an
earlier batch (an ``add`` or a ``get``); an operation sees the objects known when
its batch was issued, on both sides.  Results of ``get`` are compared by
identity, the rows' contents by ``execute(select ...)`` and the final state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session

import async_orm
from tests.models import Address, Base, User
from tests.reliability.conftest import EngineFactory

pytestmark = pytest.mark.reliability

KEYS = st.integers(min_value=1, max_value=4)
NAMES = st.sampled_from(["ann", "bob", "cy"])

OPERATIONS = st.one_of(
    st.tuples(st.just("add"), KEYS, NAMES),
    st.tuples(st.just("flush")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("get"), KEYS),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("begin_nested")),
    st.tuples(st.just("select")),
    st.tuples(st.just("update"), KEYS, NAMES),
)
#: (operation, starts a new batch)
PROGRAMS = st.lists(st.tuples(OPERATIONS, st.booleans()), min_size=1, max_size=24)

SEED_ROWS = [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]


def batches(program: list[tuple[tuple[Any, ...], bool]]) -> list[list[tuple[Any, ...]]]:
    out: list[list[tuple[Any, ...]]] = []
    for op, new_batch in program:
        if new_batch or not out:
            out.append([])
        out[-1].append(op)
    return out


def outcome_of_error(error: BaseException) -> tuple[str, str]:
    return ("error", type(error).__name__)


def describe(op: tuple[Any, ...], value: Any) -> Any:
    """A comparable result: no ORM objects (their state moves on afterwards)."""
    if op[0] == "get":
        return None if value is None else ("User", inspect(value).identity)
    if op[0] == "select":
        return [tuple(row) for row in value]
    if op[0] == "update":
        return value.rowcount
    return None


@dataclass
class Step:
    """One operation, bound to the objects known when its batch was issued."""

    op: tuple[Any, ...]
    known: dict[int, Any]


def after_batch(known: dict[int, Any], steps: list[Step], values: list[Any]) -> None:
    """What each side learns from a batch: objects returned by add and get."""
    for step, value in zip(steps, values, strict=True):
        op = step.op
        if op[0] == "add":
            known[op[1]] = value
        elif op[0] == "get" and not (isinstance(value, tuple) and value[:1] == ("error",)):
            if value is None:
                known.pop(op[1], None)
            else:
                known[op[1]] = value


# --------------------------------------------------------------------------
# the two sides


async def run_async(maker: Any, program: list[list[tuple[Any, ...]]]) -> list[Any]:
    results: list[Any] = []
    known: dict[int, Any] = {}
    async with maker() as session:

        async def one(step: Step) -> Any:
            op = step.op
            try:
                if op[0] == "add":
                    user = User(id=op[1], name=op[2])
                    session.add(user)
                    return user
                if op[0] == "flush":
                    return await session.flush()
                if op[0] == "commit":
                    return await session.commit()
                if op[0] == "rollback":
                    return await session.rollback()
                if op[0] == "get":
                    return await session.get(User, op[1])
                if op[0] == "delete":
                    if op[1] not in step.known:
                        return "nothing to delete"
                    return await session.delete(step.known[op[1]])
                if op[0] == "begin_nested":
                    await session.begin_nested()
                    return None
                if op[0] == "select":
                    return await session.execute(select(User.id, User.name).order_by(User.id))
                if op[0] == "update":
                    stmt = update(User).where(User.id == op[1]).values(name=op[2])
                    return await session.execute(stmt)
                raise AssertionError(op)
            except Exception as error:
                return outcome_of_error(error)

        for batch in program:
            steps = [Step(op, dict(known)) for op in batch]
            # one task per operation, all issued before any of them runs
            tasks = [asyncio.create_task(one(step)) for step in steps]
            values = await asyncio.gather(*tasks)
            after_batch(known, steps, values)
            results.extend(
                v if isinstance(v, tuple) and v[:1] == ("error",) else describe(s.op, v)
                for s, v in zip(steps, values, strict=True)
            )
    return results


def run_sync(sync_engine: sa.Engine, program: list[list[tuple[Any, ...]]]) -> list[Any]:
    results: list[Any] = []
    known: dict[int, Any] = {}
    with Session(sync_engine) as session:

        def one(step: Step) -> Any:
            op = step.op
            try:
                if op[0] == "add":
                    user = User(id=op[1], name=op[2])
                    session.add(user)
                    return user
                if op[0] == "flush":
                    return session.flush()
                if op[0] == "commit":
                    return session.commit()
                if op[0] == "rollback":
                    return session.rollback()
                if op[0] == "get":
                    return session.get(User, op[1])
                if op[0] == "delete":
                    if op[1] not in step.known:
                        return "nothing to delete"
                    return session.delete(step.known[op[1]])
                if op[0] == "begin_nested":
                    session.begin_nested()
                    return None
                if op[0] == "select":
                    return session.execute(select(User.id, User.name).order_by(User.id)).all()
                if op[0] == "update":
                    stmt = update(User).where(User.id == op[1]).values(name=op[2])
                    return session.execute(stmt)
                raise AssertionError(op)
            except Exception as error:
                return outcome_of_error(error)

        for batch in program:
            steps = [Step(op, dict(known)) for op in batch]
            values = [one(step) for step in steps]
            after_batch(known, steps, values)
            results.extend(
                v if isinstance(v, tuple) and v[:1] == ("error",) else describe(s.op, v)
                for s, v in zip(steps, values, strict=True)
            )
    return results


def reset(sync_engine: sa.Engine) -> None:
    with sync_engine.begin() as conn:
        conn.execute(sa.delete(Address))
        conn.execute(sa.delete(User))
        conn.execute(sa.insert(User), SEED_ROWS)


def table_contents(sync_engine: sa.Engine) -> list[tuple[Any, ...]]:
    with sync_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(User.id, User.name).order_by(User.id))]


# --------------------------------------------------------------------------
# the property


@pytest.fixture
async def sides(make_engine: EngineFactory, db_url: tuple[str, dict[str, Any]]) -> Any:
    engine = await make_engine(pool_size=2, max_overflow=0)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    url, kw = db_url
    model_engine = sa.create_engine(url, **kw)  # plain SQLAlchemy, not async_orm's
    yield async_orm.async_sessionmaker(engine), model_engine
    model_engine.dispose()


def in_thread(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.to_thread(fn, *args)


@settings(
    max_examples=75,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=PROGRAMS)
async def test_shared_async_session_matches_sync_session_in_submission_order(
    sides: Any, program: list[tuple[tuple[Any, ...], bool]]
) -> None:
    maker, model_engine = sides
    plan = batches(program)

    await in_thread(reset, model_engine)
    expected = await in_thread(run_sync, model_engine, plan)
    expected_rows = await in_thread(table_contents, model_engine)

    await in_thread(reset, model_engine)
    actual = await run_async(maker, plan)
    actual_rows = await in_thread(table_contents, model_engine)

    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert got == want, f"operation {i} of {plan}: async {got!r}, sync {want!r}"
    assert actual_rows == expected_rows, f"final rows differ after {plan}"
