"""Issue 14: the behaviours of the owner state at the thread boundary that need no
private server (the frozen-server outages are in ``tests/reliability/test_outages.py``).

Every test runs on SQLite (a file) and on PostgreSQL, through the public API only, and
is named after what a user sees:

- **pool_timeout is the wait**: without ``worker_timeout``, a session waits for a slot
  at most the pool's ``pool_timeout`` (0 fails fast); ``pool_timeout=None`` waits until
  a slot frees; ``worker_timeout`` still wins when given.
- **configuration from strings**: ``async_engine_from_config`` coerces ``worker_timeout``
  and ``max_workers`` like SQLAlchemy coerces ``pool_timeout``, refuses a bad value when
  the engine is created, and a failed slot wait leaves no slot counted as held.
- **shared sessions**: one of two tasks sharing a session gives up while waiting for a
  slot; the other still gets its result.
- **close is final for the slot**: a call queued behind ``close()`` never holds a
  connection without a slot, so another session never sees QueuePool's own
  ``TimeoutError``.
- **several engines**: a session with ``binds=`` to two engines holds a slot of each
  engine it uses, and of no other.
- **no I/O on the loop**: ``conn.info`` of an invalidated connection and
  ``sync_engine.connect()`` on the loop thread are refused before any pool checkout.
- **interrupts hit only their own statement**: a job on ``engine.raw_connection()`` is
  not interrupted by another task's cancellation.
- **streams cancelled as they start** leave no open server-side cursor and no
  ``ResourceWarning``.
- **one thread, in order, after a cancel**: after a cancelled call and a rollback, the
  session's calls still run in order on its one worker thread.

Synchronisation is by events (engine/pool events setting ``threading.Event``s, awaited
with ``asyncio.to_thread``), never by sleeping.  Times are measured with
``time.monotonic()`` as upper bounds, and as lower bounds only at (not above) a
configured timeout.  A guard (``asyncio.timeout``) around each wait that may hang on
today's code turns a hang into a failure naming the behaviour.  Many of these tests
fail on the code before the issue-14 rewrite; each says why in its assertion message.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc

import async_orm
from async_orm import exc as async_exc
from tests.conftest import PG_URL, dispose_checking_leaks
from tests.test_cancellation import StatementStarted

EngineFactory = Callable[..., Awaitable[async_orm.AsyncEngine]]

#: a statement that runs until it is interrupted (or for a very long time)
SLOW = {
    "postgresql": "select pg_sleep(30) /* {marker} */",
    "sqlite": (
        "with recursive c(x) as (select 1 union all select x + 1 from c) "
        "select count(*) from (select x from c limit 2000000000) /* {marker} */"
    ),
}


def slow(backend: str, marker: str) -> sa.TextClause:
    return text(SLOW[backend].format(marker=marker))


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
async def make(db_url: tuple[str, dict[str, Any]]) -> AsyncIterator[EngineFactory]:
    """``await make(**create_engine_kw)``: an engine on this test's database (no
    tables); each is disposed at teardown, after checking nothing is checked out."""
    engines: list[async_orm.AsyncEngine] = []
    url, base_kw = db_url

    async def factory(**kw: Any) -> async_orm.AsyncEngine:
        eng = async_orm.create_async_engine(url, **{**base_kw, **kw})
        engines.append(eng)
        return eng

    yield factory
    await dispose_checking_leaks(engines)


class PoolActivity:
    """Records (event name, thread ident) of every DBAPI connect (``do_connect``, which
    fires before the driver is called, and ``connect``) and every pool ``checkout``."""

    def __init__(self, engine: async_orm.AsyncEngine) -> None:
        self.seen: list[tuple[str, int]] = []
        self.sync_engine = engine.sync_engine
        self._listeners = {
            name: self._recorder(name) for name in ("do_connect", "connect", "checkout")
        }
        for name, fn in self._listeners.items():
            event.listen(self.sync_engine, name, fn)

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.seen.append((name, threading.get_ident()))

        return record

    def close(self) -> None:
        for name, fn in self._listeners.items():
            event.remove(self.sync_engine, name, fn)


async def outcome(aw: Awaitable[Any], guard: float) -> tuple[str, Any]:
    """Await ``aw`` for at most ``guard`` seconds: ("ok", value), ("error", exception)
    or ("hung", None) when the guard expired first."""
    try:
        async with asyncio.timeout(guard) as cm:
            return "ok", await aw
    except Exception as error:
        if cm.expired():
            return "hung", None
        return "error", error


def is_queuepool_timeout(error: BaseException) -> bool:
    """QueuePool's own "QueuePool limit ... reached" TimeoutError, not the slot wait's."""
    return isinstance(error, sa_exc.TimeoutError) and not isinstance(
        error, async_exc.WorkerSlotTimeout
    )


async def hold_a_slot(engine: async_orm.AsyncEngine) -> async_orm.AsyncSession:
    """A session that holds a slot (and a connection) of ``engine`` until closed."""
    session = async_orm.AsyncSession(engine)
    assert await session.scalar(text("select 1")) == 1
    return session


async def timed_query(engine: async_orm.AsyncEngine, guard: float = 5) -> tuple[str, Any, float]:
    """A new session's first query (``select 2``): its outcome (see :func:`outcome`)
    and how long it took."""
    async with async_orm.AsyncSession(engine) as session:
        start = time.monotonic()
        kind, value = await outcome(session.scalar(text("select 2")), guard)
        return kind, value, time.monotonic() - start


async def second_session_wait(engine: async_orm.AsyncEngine) -> tuple[str, Any, float]:
    """:func:`timed_query` while another session holds the engine's only slot."""
    holder = await hold_a_slot(engine)
    try:
        return await timed_query(engine)
    finally:
        await holder.close()


# --------------------------------------------------------------------------
# pool_timeout is the wait


@pytest.mark.parametrize(
    ("pool_timeout", "at_least", "at_most"),
    [(0.5, 0.4, 2.5), (0, 0.0, 1.0)],
    ids=["pool_timeout=0.5", "pool_timeout=0-fails-fast"],
)
async def test_second_session_times_out_after_pool_timeout_when_worker_timeout_is_not_given(
    make: EngineFactory, pool_timeout: float, at_least: float, at_most: float
) -> None:
    engine = await make(pool_size=1, max_overflow=0, pool_timeout=pool_timeout)
    kind, value, elapsed = await second_session_wait(engine)
    assert kind != "hung", (
        f"the second session still waited for a slot after 5 s: pool_timeout={pool_timeout} "
        "was not used as the slot wait (worker_timeout was not given)"
    )
    assert kind == "error", (
        f"the second session got a slot although the only one was held: {value!r}"
    )
    assert isinstance(value, sa_exc.TimeoutError), f"not a sqlalchemy TimeoutError: {value!r}"
    assert at_least <= elapsed < at_most, (
        f"the slot wait took {elapsed:.2f} s with pool_timeout={pool_timeout}"
    )


async def test_worker_timeout_when_given_wins_over_pool_timeout(make: EngineFactory) -> None:
    engine = await make(pool_size=1, max_overflow=0, pool_timeout=30, worker_timeout=0.3)
    kind, value, elapsed = await second_session_wait(engine)
    assert kind == "error" and isinstance(value, async_exc.WorkerSlotTimeout), (kind, value)
    assert elapsed < 2.5, f"worker_timeout=0.3 but the slot wait took {elapsed:.2f} s"


async def test_pool_timeout_none_waits_until_a_slot_frees(make: EngineFactory) -> None:
    """``pool_timeout=None`` waits as long as it takes, like QueuePool.

    The waiter must still be waiting 1.5 s later (three times the 0.5 s pool_timeout
    of the test above: an implementation that reads None as "no wait" or as a small
    default fails here), then get the slot as soon as the holder closes.  It cannot
    tell None from the 30 s default without waiting 30 s; that is the price of a
    test that does not take half a minute.
    """
    engine = await make(pool_size=1, max_overflow=0, pool_timeout=None)
    holder = await hold_a_slot(engine)
    waiter = async_orm.AsyncSession(engine)
    task = asyncio.create_task(waiter.scalar(text("select 2")))
    try:
        done, _ = await asyncio.wait({task}, timeout=1.5)
        assert not done, (
            f"with pool_timeout=None the waiting session gave up: {task.exception()!r}"
        )
        await holder.close()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the waiting session did not get the slot within 5 s of it freeing"
        assert task.result() == 2
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        await holder.close()
        await waiter.close()


# --------------------------------------------------------------------------
# configuration from strings


def config_engine(db_url: tuple[str, dict[str, Any]], **options: str) -> async_orm.AsyncEngine:
    url, kw = db_url
    config = {"sqlalchemy.url": url, **{f"sqlalchemy.{k}": v for k, v in options.items()}}
    return async_orm.async_engine_from_config(config, **kw)


async def test_engine_from_config_strings_applies_worker_timeout_and_max_workers(
    db_url: tuple[str, dict[str, Any]],
) -> None:
    engine = config_engine(db_url, worker_timeout="1", max_workers="4", pool_timeout="2")
    holders: list[async_orm.AsyncSession] = []
    try:
        # max_workers="4": four sessions hold a slot each at the same time ...
        for _ in range(4):
            holders.append(await hold_a_slot(engine))
        # ... and a fifth waits worker_timeout="1" (not pool_timeout="2") for one
        kind, value, elapsed = await timed_query(engine)
        assert kind == "error" and isinstance(value, async_exc.WorkerSlotTimeout), (
            f"a fifth session with max_workers='4' should wait for a slot: {kind} {value!r}"
        )
        assert 0.9 <= elapsed < 1.9, (
            f"worker_timeout='1' but the fifth session waited {elapsed:.2f} s"
        )
    finally:
        for holder in holders:
            await holder.close()
        await engine.dispose()


@pytest.mark.parametrize("option", ["worker_timeout", "max_workers"])
async def test_bad_config_string_is_a_clear_error_at_engine_creation(
    db_url: tuple[str, dict[str, Any]], option: str
) -> None:
    try:
        engine = config_engine(db_url, **{option: "abc"})
    except (sa_exc.ArgumentError, ValueError) as error:
        assert option in str(error), f"the error does not name {option!r}: {error}"
        return
    await engine.dispose()
    pytest.fail(f"async_engine_from_config accepted {option}='abc' without an error")


@pytest.mark.parametrize("configured", ["keywords", "strings"])
async def test_failed_slot_waits_leave_no_slot_held(
    db_url: tuple[str, dict[str, Any]], configured: str
) -> None:
    url, kw = db_url
    if configured == "strings":
        engine = config_engine(db_url, pool_size="1", max_overflow="0", worker_timeout="1")
    else:
        engine = async_orm.create_async_engine(
            url, pool_size=1, max_overflow=0, worker_timeout=1, **kw
        )
    try:
        holder = await hold_a_slot(engine)
        waiters = [async_orm.AsyncSession(engine) for _ in range(4)]
        try:
            # three waits time out; a fourth is given up by its caller (asyncio.timeout)
            outcomes = await asyncio.gather(
                *(outcome(w.scalar(text("select 2")), guard=5) for w in waiters[:3]),
                outcome(waiters[3].scalar(text("select 2")), guard=0.2),
            )
        finally:
            for waiter in waiters:
                await waiter.close()
            await holder.close()
        for kind, value in outcomes[:3]:
            assert kind == "error" and isinstance(value, async_exc.WorkerSlotTimeout), (
                f"a slot wait should end in WorkerSlotTimeout: {kind} {value!r}"
            )
        assert outcomes[3][0] == "hung", outcomes[3]  # the caller's own timeout
        # the slot is free again: a new session gets it at once (well within the 1 s wait)
        kind, value, _ = await timed_query(engine, guard=0.9)
        assert (kind, value) == ("ok", 2), (
            f"the only slot is free but a new session did not get it at once: {kind} {value!r}"
            " (a failed or abandoned slot wait left the slot counted as held)"
        )
    finally:
        await engine.dispose()


async def test_a_detached_connection_no_longer_counts_against_its_owners_slot(
    make: EngineFactory,
) -> None:
    # pool 1 + 0: after detach() the DBAPI connection is outside the pool, so the
    # session's next checkout (after the commit closed the detached one) is within
    # the slot it holds
    engine = await make(pool_size=1, max_overflow=0, worker_timeout=1)
    async with async_orm.AsyncSession(engine) as session:
        await session.run_sync(lambda sync_session: sync_session.connection().detach())
        await session.commit()
        kind, value = await outcome(session.scalar(text("select 3")), guard=5)
        assert (kind, value) == ("ok", 3), (
            f"the owner's checkout after a detach waited for a second slot: {kind} {value!r}"
        )
    kind, value, _ = await timed_query(engine, guard=5)
    assert (kind, value) == ("ok", 2), (kind, value)


# --------------------------------------------------------------------------
# shared sessions


@pytest.mark.parametrize("gives_up", ["first", "second"])
async def test_shared_session_task_gets_its_result_after_the_other_task_gave_up(
    make: EngineFactory, gives_up: str
) -> None:
    engine = await make(pool_size=1, max_overflow=0, pool_timeout=10, worker_timeout=10)
    holder = await hold_a_slot(engine)
    shared = async_orm.AsyncSession(engine)

    async def impatient() -> Any:
        async with asyncio.timeout(0.3):
            return await shared.scalar(text("select 1"))

    async def patient() -> Any:
        return await shared.scalar(text("select 2"))

    # both wait for the slot the holder has; "first" is the task that started the wait
    if gives_up == "first":
        giving_up = asyncio.create_task(impatient())
        waiting = asyncio.create_task(patient())
    else:
        waiting = asyncio.create_task(patient())
        giving_up = asyncio.create_task(impatient())
    try:
        with pytest.raises(TimeoutError):
            await giving_up
        assert not waiting.done(), (
            "the task still waiting on the shared session ended when the other gave up: "
            + ("CancelledError" if waiting.cancelled() else repr(waiting.exception()))
        )
        await holder.close()
        done, _ = await asyncio.wait({waiting}, timeout=5)
        assert done, "the waiting task did not get the freed slot within 5 s"
        assert not waiting.cancelled(), "the waiting task got the other task's CancelledError"
        assert waiting.result() == 2
    finally:
        if not waiting.done():
            waiting.cancel()
            await asyncio.wait({waiting})
        await holder.close()
        await shared.close()


# --------------------------------------------------------------------------
# close is final for the slot


async def test_call_queued_behind_close_never_makes_another_session_hit_queuepool_timeout(
    make: EngineFactory,
) -> None:
    """A request's session is closed while a background task's call on it is queued.

    Pool 1 + 0: the late call may run with a slot of its own (reacquired after the
    close) or fail clearly, but it must never run on a connection without a slot,
    which would make an unrelated session wait on QueuePool itself and get
    QueuePool's "limit ... reached" TimeoutError instead of the slot wait's.
    """
    engine = await make(pool_size=1, max_overflow=0, pool_timeout=0.5, worker_timeout=0.5)
    request_session = await hold_a_slot(engine)
    closing = threading.Event()
    release = threading.Event()
    armed = [True]
    close_threads: list[int] = []

    def block_the_close(dbapi_connection: Any, record: Any) -> None:
        # the request session's connection goes back to the pool: hold the close here
        if armed[0]:
            armed[0] = False
            close_threads.append(threading.get_ident())
            closing.set()
            release.wait(10)

    event.listen(engine.sync_engine, "checkin", block_the_close)
    late: asyncio.Task[Any] | None = None
    try:
        close_task = asyncio.create_task(request_session.close())
        assert await asyncio.to_thread(closing.wait, 10), "close() never returned the connection"
        assert close_threads != [threading.get_ident()], "close() ran on the event loop thread"
        late = asyncio.create_task(request_session.scalar(text("select 2")))
        await asyncio.sleep(0)  # one loop pass: the background task submits its call
        release.set()
        await close_task
        done, _ = await asyncio.wait({late}, timeout=5)
        assert done, "the call queued behind close() neither ran nor failed within 5 s"
        assert not late.cancelled(), "the call queued behind close() was cancelled"
        error = late.exception()
        if error is not None:
            assert isinstance(error, sa_exc.SQLAlchemyError) and str(error), (
                f"the late call failed, but not clearly: {error!r}"
            )
        else:
            assert late.result() == 2

        # an unrelated session: a slot and a connection, or the slot wait's own error
        kind, value, _ = await timed_query(engine)
        assert kind != "hung", "an unrelated session hung"
        if kind == "error":
            assert not is_queuepool_timeout(value), (
                f"an unrelated session got QueuePool's own TimeoutError: {value}; the call "
                "queued behind close() holds the connection without a slot"
            )
            assert isinstance(value, async_exc.WorkerSlotTimeout), repr(value)
        else:
            assert value == 2
    finally:
        release.set()
        event.remove(engine.sync_engine, "checkin", block_the_close)
        if late is not None and not late.done():
            late.cancel()
            await asyncio.wait({late})
        await request_session.close()
    # once the request session is closed again, everything is free
    async with async_orm.AsyncSession(engine) as after:
        assert await after.scalar(text("select 4")) == 4


# --------------------------------------------------------------------------
# several engines


@pytest.fixture
def second_db_url(
    db_url: tuple[str, dict[str, Any]], backend: str, tmp_path: Any
) -> tuple[str, dict[str, Any]]:
    """A second database for a second engine: another SQLite file, or the same
    PostgreSQL schema (a second engine has a pool of its own either way)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'second.db'}", {}
    return db_url


@pytest.mark.parametrize("uses", ["first", "second", "both"])
async def test_session_with_two_binds_holds_a_slot_of_each_engine_it_uses(
    db_url: tuple[str, dict[str, Any]],
    second_db_url: tuple[str, dict[str, Any]],
    uses: str,
) -> None:
    metadata = sa.MetaData()
    suffix = uuid.uuid4().hex[:8]
    one = sa.Table(f"bind_one_{suffix}", metadata, sa.Column("id", sa.Integer, primary_key=True))
    two = sa.Table(f"bind_two_{suffix}", metadata, sa.Column("id", sa.Integer, primary_key=True))
    limits = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.3, "worker_timeout": 0.3}
    engines = {
        "first": async_orm.create_async_engine(db_url[0], **db_url[1], **limits),
        "second": async_orm.create_async_engine(second_db_url[0], **second_db_url[1], **limits),
    }
    tables = {"first": one, "second": two}
    try:
        for name, engine in engines.items():
            async with engine.begin() as conn:
                await conn.run_sync(tables[name].create)
        used = {"first", "second"} if uses == "both" else {uses}
        shared = async_orm.AsyncSession(binds={one: engines["first"], two: engines["second"]})
        try:
            for name in sorted(used):
                await shared.execute(sa.select(tables[name]))
            for name, engine in engines.items():
                kind, value, _ = await timed_query(engine)
                assert kind != "hung", f"a session on the {name} engine hung"
                if kind == "error":
                    assert not is_queuepool_timeout(value), (
                        f"a session on the {name} engine got QueuePool's own TimeoutError "
                        f"({value}): the two-bind session holds its connection without a slot"
                    )
                if name in used:
                    assert kind == "error" and isinstance(value, async_exc.WorkerSlotTimeout), (
                        f"the two-bind session uses the {name} engine, so a session on it "
                        f"must wait for that engine's only slot: {kind} {value!r}"
                    )
                else:
                    assert (kind, value) == ("ok", 2), (
                        f"the two-bind session has not used the {name} engine, yet a session "
                        f"on it did not get a slot at once: {kind} {value!r}"
                    )
        finally:
            await shared.close()
        for name, engine in engines.items():
            async with async_orm.AsyncSession(engine) as after:
                assert await after.scalar(text("select 8")) == 8, name
            assert engine.pool.checkedout() == 0, name  # type: ignore[attr-defined]
    finally:
        for name, engine in engines.items():
            async with engine.begin() as conn:
                await conn.run_sync(tables[name].drop, checkfirst=True)
            await engine.dispose()


# --------------------------------------------------------------------------
# no I/O on the loop, ever


@pytest.fixture
async def pool_activity(
    make: EngineFactory,
) -> AsyncIterator[tuple[async_orm.AsyncEngine, PoolActivity]]:
    engine = await make()
    activity = PoolActivity(engine)
    yield engine, activity
    activity.close()


async def test_info_of_an_invalidated_connection_is_refused_on_the_loop_before_any_checkout(
    pool_activity: tuple[async_orm.AsyncEngine, PoolActivity],
) -> None:
    engine, activity = pool_activity
    loop_thread = threading.get_ident()
    async with engine.connect() as conn:
        await conn.invalidate()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        activity.seen.clear()
        try:
            info = conn.info
        except async_exc.EventLoopIOError:
            refused = True
        else:
            refused = False
            assert isinstance(info, dict)
        assert activity.seen == [], (
            f"reading conn.info of an invalidated connection reached the pool on the loop "
            f"thread: {activity.seen}"
        )
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert refused, (
            "reading conn.info of an invalidated connection (which reconnects) was not "
            "refused with EventLoopIOError"
        )
        # the awaited way still works: it reconnects on the connection's worker
        assert await conn.scalar(text("select 1")) == 1
        assert activity.seen and loop_thread not in {t for _, t in activity.seen}


async def test_sync_engine_connect_on_the_loop_is_refused_before_any_checkout(
    pool_activity: tuple[async_orm.AsyncEngine, PoolActivity],
) -> None:
    engine, activity = pool_activity
    try:
        conn = engine.sync_engine.connect()
    except async_exc.EventLoopIOError:
        refused = True
    else:
        refused = False
        with async_orm.allow_loop_io():
            conn.close()
    assert activity.seen == [], (
        f"sync_engine.connect() on the loop thread reached the pool: {activity.seen}"
    )
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert refused, "sync_engine.connect() on the loop thread was not refused (EventLoopIOError)"


async def test_allow_loop_io_still_lets_sync_engine_connect_on_the_loop(
    pool_activity: tuple[async_orm.AsyncEngine, PoolActivity],
) -> None:
    engine, activity = pool_activity
    with async_orm.allow_loop_io(), engine.sync_engine.connect() as conn:
        assert conn.scalar(text("select 1")) == 1
    assert ("checkout", threading.get_ident()) in activity.seen


# --------------------------------------------------------------------------
# interrupts hit only their own statement


class _AdvisoryLock:
    """A PostgreSQL advisory lock held by a connection of the test's own (plain
    SQLAlchemy, not async_orm), so that a statement can wait on it for exactly as long
    as the test wants."""

    def __init__(self) -> None:
        self.key = int(uuid.uuid4().int % 2_000_000_000)
        self._engine = sa.create_engine(
            PG_URL, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        self._conn: sa.Connection | None = None

    def hold(self) -> None:
        self._conn = self._engine.connect()
        self._conn.execute(text("select pg_advisory_lock(cast(:k as bigint))"), {"k": self.key})

    def waiters(self) -> int:
        assert self._conn is not None
        n = self._conn.scalar(
            text(
                "select count(*) from pg_locks where locktype = 'advisory' "
                "and not granted and classid = 0 and objid::bigint = cast(:k as bigint)"
            ),
            {"k": self.key},
        )
        return int(n or 0)

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute(
                text("select pg_advisory_unlock(cast(:k as bigint))"), {"k": self.key}
            )
            self._conn.close()
            self._conn = None
        self._engine.dispose()


async def test_raw_connection_job_is_not_interrupted_by_another_tasks_cancellation(
    make: EngineFactory, backend: str
) -> None:
    engine = await make(pool_size=2, max_overflow=0)
    raw = await engine.raw_connection()
    entered = threading.Event()
    go = threading.Event()
    lock = _AdvisoryLock() if backend == "postgresql" else None

    if backend == "sqlite":
        # the raw job waits inside a function of its own, then runs a loop that an
        # interrupt received meanwhile would stop
        def wait_for_go() -> int:
            entered.set()
            go.wait(10)
            return 1

        raw.driver_connection.create_function("wait_for_go", 0, wait_for_go)  # type: ignore[union-attr]
        raw_sql = (
            "with recursive c(x) as (select wait_for_go() union all select x + 1 from c "
            "where x < 100000) select count(*) from c"
        )
        expected: Any = 100000
    else:
        assert lock is not None
        await asyncio.to_thread(lock.hold)
        raw_sql = f"select pg_advisory_xact_lock({lock.key}), 42"
        expected = 42

    def raw_job() -> Any:
        cursor = raw.cursor()
        try:
            cursor.execute(raw_sql)
            value = cursor.fetchone()[1 if backend == "postgresql" else 0]
        finally:
            cursor.close()
        raw.rollback()
        return value

    job = asyncio.create_task(asyncio.to_thread(raw_job))
    try:
        if backend == "sqlite":
            assert await asyncio.to_thread(entered.wait, 10), "the raw job never started"
        else:
            assert lock is not None
            deadline = time.monotonic() + 10
            while not await asyncio.to_thread(lock.waiters):  # a server state: polled
                assert time.monotonic() < deadline, "the raw job never waited on the lock"
                await asyncio.sleep(0.02)
        # meanwhile another task's statement on the same engine is cancelled
        seen = StatementStarted(engine, "other-task")
        try:
            async with async_orm.AsyncSession(engine) as other:
                task = asyncio.create_task(other.execute(slow(backend, "other-task")))
                await seen.wait()
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=5)
                assert done and task.cancelled(), "the other task's cancellation did not end it"
                await other.rollback()
        finally:
            seen.close()
        # let the raw job go on: it must complete, not fail as interrupted
        if lock is not None:
            await asyncio.to_thread(lock.release)
        go.set()
        kind, value = await outcome(job, guard=10)
        assert kind == "ok", (
            f"the raw_connection() job failed: {value!r}; another task's cancellation "
            "interrupted a statement it did not own"
        )
        assert value == expected
    finally:
        go.set()
        if lock is not None:
            await asyncio.to_thread(lock.release)
        if not job.done():
            await asyncio.wait({job}, timeout=10)
        await asyncio.to_thread(raw.close)


# --------------------------------------------------------------------------
# streams cancelled as they start


STREAM = {
    "postgresql": "select x from generate_series(1, 1000) as x /* stream-start */",
    "sqlite": (
        "with recursive c(x) as (select 1 union all select x + 1 from c where x < 1000) "
        "select x from c /* stream-start */"
    ),
}


@pytest.fixture
def stream_hooks(
    pool_activity: tuple[async_orm.AsyncEngine, PoolActivity], backend: str
) -> Iterator[tuple[async_orm.AsyncEngine, threading.Event, threading.Event, list[Any]]]:
    """(engine, executed, go, at rollback): the stream's statement blocks on the
    worker right after it executed (its server-side cursor is open) until ``go``;
    each Core rollback records how many cursors its PostgreSQL session still has,
    or ``ABORTED`` when the interrupt had cancelled the stream's own statement."""
    engine, _ = pool_activity
    executed = threading.Event()
    go = threading.Event()
    at_rollback: list[Any] = []
    cancelled_stream: list[bool] = []

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "stream-start" in statement:
            executed.set()
            go.wait(10)

    def on_error(context: sa.engine.ExceptionContext) -> None:
        statement = context.statement or ""
        cancelled_stream.append(
            "stream-start" in statement
            and type(context.original_exception).__name__ == "QueryCanceled"
        )

    def on_rollback(conn: sa.Connection) -> None:
        if backend != "postgresql":
            return
        try:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            from psycopg import pq

            if dbapi.info.transaction_status == pq.TransactionStatus.INERROR:  # type: ignore[attr-defined]
                # only the interrupt of the stream's own statement may have aborted it
                # (its first fetch, when the cancel request overtook go.set()); the
                # server then drops the transaction's cursors with this rollback
                at_rollback.append(ABORTED if cancelled_stream == [True] else cancelled_stream)
                return
            row = dbapi.execute("select count(*) from pg_cursors").fetchone()  # type: ignore[attr-defined]
            at_rollback.append(row[0])
        except Exception as error:  # shown by the assertion
            at_rollback.append(repr(error))

    event.listen(engine.sync_engine, "after_cursor_execute", after_execute)
    event.listen(engine.sync_engine, "handle_error", on_error)
    event.listen(engine.sync_engine, "rollback", on_rollback)
    yield engine, executed, go, at_rollback
    go.set()
    event.remove(engine.sync_engine, "after_cursor_execute", after_execute)
    event.remove(engine.sync_engine, "handle_error", on_error)
    event.remove(engine.sync_engine, "rollback", on_rollback)


ABORTED = "aborted by the interrupt of the stream's own statement"


async def test_stream_cancelled_as_it_starts_leaves_no_open_cursor_and_no_resource_warning(
    stream_hooks: tuple[async_orm.AsyncEngine, threading.Event, threading.Event, list[Any]],
    backend: str,
) -> None:
    engine, executed, go, at_rollback = stream_hooks
    session = async_orm.AsyncSession(engine)

    async def consume() -> list[Any]:
        result = await session.stream(text(STREAM[backend]))
        return [row async for row in result]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            assert await session.scalar(text("select 1")) == 1
            task = asyncio.create_task(consume())
            assert await asyncio.to_thread(executed.wait, 10), "the stream never started"
            task.cancel()  # the cursor is open on the worker, the result not handed over yet
            go.set()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done and task.cancelled(), "the cancelled stream did not end in CancelledError"
            await session.rollback()
            assert await session.scalar(text("select 2")) == 2
        finally:
            go.set()
            await session.close()
            gc.collect()
    resource_warnings = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    # PostgreSQL: the first rollback after the cancel counted the session's open cursors
    # (none recorded: the transaction, and its cursors with it, had already ended); or
    # the cancel request reached the stream's own first fetch, which aborted the
    # transaction: then the server drops the cursor with that rollback, and psycopg's
    # cursor object was closed (no ResourceWarning)
    open_cursors = at_rollback[0] if at_rollback else 0
    assert open_cursors in (0, ABORTED) and resource_warnings == [], (
        f"a stream cancelled as it started left {open_cursors!r} server-side cursor(s) open "
        f"until the rollback, and these ResourceWarning(s): {resource_warnings}"
    )


# --------------------------------------------------------------------------
# one thread per session and order, after a cancel


async def test_after_a_cancel_and_rollback_calls_run_in_order_on_the_sessions_one_thread(
    pool_activity: tuple[async_orm.AsyncEngine, PoolActivity], backend: str
) -> None:
    engine, _ = pool_activity
    records: list[tuple[int, str]] = []
    records_lock = threading.Lock()

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with records_lock:
            records.append((threading.get_ident(), statement))

    def on_rollback(conn: Any) -> None:
        with records_lock:
            records.append((threading.get_ident(), "ROLLBACK"))

    event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
    event.listen(engine.sync_engine, "rollback", on_rollback)
    seen = StatementStarted(engine, "to-cancel")
    try:
        async with async_orm.AsyncSession(engine) as session:
            assert await session.scalar(text("select 1 /* before */")) == 1
            task = asyncio.create_task(session.execute(slow(backend, "to-cancel")))
            await seen.wait()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done and task.cancelled(), "the cancelled call did not end in CancelledError"
            await session.rollback()
            results = await asyncio.gather(
                *(session.scalar(text(f"select {i} /* after-{i} */")) for i in range(5))
            )
            assert results == list(range(5))
    finally:
        seen.close()
        event.remove(engine.sync_engine, "before_cursor_execute", on_statement)
        event.remove(engine.sync_engine, "rollback", on_rollback)
    threads = {ident for ident, _ in records}
    assert len(threads) == 1, f"the session's statements ran on {len(threads)} threads: {records}"
    assert threading.get_ident() not in threads, "a statement ran on the event loop thread"
    kinds = [
        "before" if "before" in s else "to-cancel" if "to-cancel" in s else s
        for _, s in records
        if "after-" not in s
    ]
    assert kinds[:3] == ["before", "to-cancel", "ROLLBACK"], kinds
    after = [s.split("/* ")[1].split(" */")[0] for _, s in records if "after-" in s]
    assert after == [f"after-{i}" for i in range(5)], f"calls ran out of order: {after}"
