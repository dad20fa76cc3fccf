"""AsyncResult, AsyncScalarResult, AsyncMappingResult, AsyncTupleResult: every
method, from ``AsyncSession.stream()`` and ``AsyncConnection.stream()``, on
SQLite and PostgreSQL.

Streaming on PostgreSQL must use a server-side cursor (checked on the DBAPI
cursor and in ``pg_cursors``), and ``async for`` / ``partitions()`` must fetch
rows in chunks: the tests count the thread hops each read costs by counting
the calls that go through the owner's runner (one call = one hop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import bindparam, func, select, text, true
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import FrozenResult, Row, RowMapping
from sqlalchemy.engine.cursor import FullyBufferedCursorFetchStrategy

import async_orm
from async_orm import _worker
from async_orm import exc as async_exc
from async_orm.result import AsyncMappingResult, AsyncResult, AsyncScalarResult
from tests.conftest import seed_users
from tests.models import Address, User

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]

ROWS = 250


@pytest.fixture
async def rows(engine: async_orm.AsyncEngine) -> int:
    """ROWS users u001..u250; user 1 has two addresses."""
    await seed_users(engine, ROWS, digits=3)
    return ROWS


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], int]:
    """hops(owner) -> how many calls went through owner's runner (thread hops) so far."""
    counts: dict[int, int] = {}
    original = _worker.Runner.run

    def counting_run(
        self: _worker.Runner, kind: _worker.Kind, fn: Callable[..., Any], /, *args: Any, **kw: Any
    ) -> Any:
        counts[id(self)] = counts.get(id(self), 0) + 1
        return original(self, kind, fn, *args, **kw)

    monkeypatch.setattr(_worker.Runner, "run", counting_run)
    return lambda owner: counts.get(id(owner._runner), 0)


ordered = select(User.id, User.name).order_by(User.id)


# -- streaming mechanics ------------------------------------------------------------


async def test_stream_uses_a_server_side_cursor_on_postgresql(
    maker: Maker, rows: int, backend: str
) -> None:
    async with maker() as session:
        result = await session.stream(ordered)
        real: Any = result._real_result
        real = getattr(real, "raw", real)  # ORM results wrap the CursorResult
        cursor = real.cursor
        if backend == "postgresql":
            import psycopg

            assert real.context._is_server_side
            assert isinstance(cursor, psycopg.ServerCursor)
            open_cursors = await session.scalar(text("select count(*) from pg_cursors"))
            assert open_cursors == 1  # the stream's, inside this transaction
        else:
            # SQLite has no server-side cursors: the cursor stays open, rows unfetched
            assert cursor is not None
            assert not isinstance(real.cursor_strategy, FullyBufferedCursorFetchStrategy)
        first = await result.fetchone()
        assert first is not None and first.id == 1
        await result.close()
        assert result.closed
        if backend == "postgresql":
            assert await session.scalar(text("select count(*) from pg_cursors")) == 0


async def test_async_for_fetches_rows_in_chunks_not_one_hop_per_row(
    maker: Maker, rows: int, hops: Callable[[Any], int]
) -> None:
    async with maker() as session:
        result = await session.stream(ordered, execution_options={"yield_per": 50})
        before = hops(session)
        ids = [row.id async for row in result]
        assert ids == list(range(1, rows + 1))
        # 5 chunks of 50 + the empty fetch; at least 5 proves the counting itself works
        assert rows // 50 <= hops(session) - before <= rows // 50 + 1

        result = await session.stream(ordered)  # default chunk
        before = hops(session)
        assert len([row async for row in result]) == rows
        assert hops(session) - before <= 2

        scalars = await session.stream_scalars(select(User).execution_options(yield_per=100))
        before = hops(session)
        assert len([user async for user in scalars]) == rows
        assert hops(session) - before <= rows // 100 + 2


async def test_partitions_fetch_one_hop_per_partition(
    engine: async_orm.AsyncEngine, rows: int, hops: Callable[[Any], int]
) -> None:
    async with engine.connect() as conn:
        result = await conn.stream(ordered)
        before = hops(conn)
        sizes = [len(p) async for p in result.partitions(100)]
        assert sizes == [100, 100, 50]
        assert 3 <= hops(conn) - before <= 4

        result = await conn.stream(ordered, execution_options={"yield_per": 60})
        before = hops(conn)
        sizes = [len(p) async for p in result.partitions()]
        assert sizes == [60, 60, 60, 60, 10]
        assert hops(conn) - before <= 6


async def test_execute_refuses_a_server_side_cursor_and_points_to_stream(
    maker: Maker, engine: async_orm.AsyncEngine, rows: int, backend: str
) -> None:
    async with maker() as session:
        if backend == "postgresql":
            with pytest.raises(async_exc.AsyncMethodRequired, match=r"stream\(\)"):
                await session.execute(ordered, execution_options={"stream_results": True})
        else:  # no server-side cursors on SQLite: a plain buffered result
            result = await session.execute(ordered, execution_options={"stream_results": True})
            assert len(result.all()) == rows
    async with engine.connect() as conn:
        if backend == "postgresql":
            with pytest.raises(async_exc.AsyncMethodRequired, match=r"stream\(\)"):
                await conn.execute(ordered, execution_options={"stream_results": True})
        else:
            result = await conn.execute(ordered, execution_options={"stream_results": True})
            assert len(result.all()) == rows


# -- AsyncResult ------------------------------------------------------------------


async def test_fetchone_fetchmany_fetchall_and_all(maker: Maker, rows: int) -> None:
    async with maker() as session:
        result = await session.stream(ordered)
        assert isinstance(result, AsyncResult)
        one = await result.fetchone()
        assert isinstance(one, Row) and tuple(one) == (1, "u001")
        many = await result.fetchmany(3)
        assert [r.id for r in many] == [2, 3, 4]
        default = await result.fetchmany()  # the strategy's default size
        assert len(default) >= 1 and default[0].id == 5
        rest = await result.fetchall()
        assert [r.id for r in default + rest] == list(range(5, rows + 1))
        assert await result.fetchone() is None
        assert await result.fetchmany(5) == []
        result = await session.stream(ordered)
        assert (await result.fetchone()).id == 1  # type: ignore[union-attr]
        everything = await result.all()
        assert [r.id for r in everything] == list(range(2, rows + 1))


async def test_first_one_one_or_none_and_the_scalar_accessors(maker: Maker, rows: int) -> None:
    async with maker() as session:
        result = await session.stream(ordered)
        first = await result.first()
        assert first is not None and first.id == 1 and result.closed
        by_id = select(User.id, User.name).where(User.id == 7)
        none = select(User.id).where(User.id < 0)
        assert (await (await session.stream(by_id)).one()).name == "u007"
        assert (await (await session.stream(by_id)).one_or_none()).name == "u007"  # type: ignore[union-attr]
        assert await (await session.stream(none)).one_or_none() is None
        assert await (await session.stream(none)).first() is None
        with pytest.raises(sa_exc.NoResultFound):
            await (await session.stream(none)).one()
        with pytest.raises(sa_exc.MultipleResultsFound):
            await (await session.stream(ordered)).one()
        with pytest.raises(sa_exc.MultipleResultsFound):
            await (await session.stream(ordered)).one_or_none()
        assert await (await session.stream(ordered)).scalar() == 1
        assert await (await session.stream(none)).scalar() is None
        assert await (await session.stream(by_id)).scalar_one() == 7
        with pytest.raises(sa_exc.NoResultFound):
            await (await session.stream(none)).scalar_one()
        assert await (await session.stream(by_id)).scalar_one_or_none() == 7
        assert await (await session.stream(none)).scalar_one_or_none() is None
        with pytest.raises(sa_exc.MultipleResultsFound):
            await (await session.stream(ordered)).scalar_one_or_none()
        # after part of the result was read in a chunk
        result = await session.stream(ordered)
        await result.fetchone()
        with pytest.raises(sa_exc.MultipleResultsFound):
            await result.one()


async def test_keys_columns_unique_and_yield_per(maker: Maker, rows: int) -> None:
    async with maker() as session:
        result = await session.stream(ordered)
        assert list(result.keys()) == ["id", "name"]
        assert result.yield_per(10) is result
        names = result.columns("name")
        assert list(names.keys()) == ["name"]
        assert tuple(await names.fetchone()) == ("u001",)  # type: ignore[arg-type]
        await result.close()
        by_position = await (await session.stream(ordered)).columns(1, 0).first()
        assert tuple(by_position) == ("u001", 1)  # type: ignore[arg-type]
        joined = select(User.name).join(User.addresses).order_by(User.name)
        assert len(await (await session.stream(joined)).all()) == 2
        assert await (await session.stream(joined)).unique().all() == [("u001",)]
        entity_rows = await session.stream(select(User).join(User.addresses))
        unique_users = await entity_rows.unique().scalars().all()
        assert [u.id for u in unique_users] == [1]


async def test_scalars_mappings_tuples_and_t(maker: Maker, rows: int) -> None:
    async with maker() as session:
        scalars = (await session.stream(ordered)).scalars()
        assert isinstance(scalars, AsyncScalarResult)
        assert (await scalars.fetchmany(2)) == [1, 2]
        await scalars.close()
        named = (await session.stream(ordered)).scalars("name")
        assert await named.first() == "u001"
        second = (await session.stream(ordered)).scalars(1)
        assert await second.first() == "u001"
        mappings = (await session.stream(ordered)).mappings()
        assert isinstance(mappings, AsyncMappingResult)
        mapping = await mappings.fetchone()
        assert isinstance(mapping, RowMapping) and dict(mapping) == {"id": 1, "name": "u001"}
        await mappings.close()
        result = await session.stream(ordered)
        assert result.tuples() is result and result.t is result
        tuple_rows = [tuple(r) async for r in result.t]
        assert tuple_rows[0] == (1, "u001") and len(tuple_rows) == rows


async def test_freeze_gives_a_reusable_frozen_result(maker: Maker, rows: int) -> None:
    async with maker() as session:
        frozen = await (await session.stream(ordered.limit(3))).freeze()
        assert isinstance(frozen, FrozenResult)
        assert [tuple(r) for r in frozen().all()] == [(1, "u001"), (2, "u002"), (3, "u003")]
        assert [r.id for r in frozen().all()] == [1, 2, 3]  # again


#: user 1 has two addresses: a join gives its name twice
_joined = select(User.id, User.name, Address.email).join(User.addresses).order_by(Address.id)

#: (what to apply to the result, on the sync Result and the AsyncResult alike)
_FILTERS: dict[str, Callable[[Any], Any]] = {
    "columns by name": lambda r: r.columns("name"),
    "columns by position": lambda r: r.columns(2, 0),
    "unique": lambda r: r.columns("id", "name").unique(),
    "columns then unique": lambda r: r.columns("name").unique(),
    "unique with a strategy": lambda r: r.unique(lambda row: row.name),
}


def _frozen_rows(frozen: FrozenResult[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    thawed = frozen()
    return list(thawed.keys()), [tuple(row) for row in thawed.all()]


@pytest.mark.parametrize("applied", list(_FILTERS))
async def test_freeze_after_columns_or_unique_holds_the_filtered_rows(
    maker: Maker, rows: int, applied: str
) -> None:
    apply = _FILTERS[applied]
    async with maker() as session:
        iterated = [tuple(row) async for row in apply(await session.stream(_joined))]
        frozen = await apply(await session.stream(_joined)).freeze()
        keys, frozen_rows = _frozen_rows(frozen)
        # SQLAlchemy's own freeze() of the same sync result, on the same database
        expected = await session.run_sync(
            lambda sync: _frozen_rows(apply(sync.execute(_joined)).freeze())
        )
    assert frozen_rows == iterated  # exactly what iterating the filtered result gives
    assert (keys, frozen_rows) == expected
    assert len(frozen_rows) < 3 if "unique" in applied else len(frozen_rows) == 2
    assert len(keys) == len(frozen_rows[0])


async def test_freeze_of_a_connection_stream_after_columns_and_unique(
    engine: async_orm.AsyncEngine, rows: int
) -> None:
    async with engine.connect() as conn:
        result = await conn.stream(_joined)
        frozen = await result.columns("name").unique().freeze()
        assert _frozen_rows(frozen) == (["name"], [("u001",)])
        expected = await conn.run_sync(
            lambda sync: _frozen_rows(sync.execute(_joined).columns("name").unique().freeze())
        )
        assert expected == (["name"], [("u001",)])


async def test_freeze_of_an_orm_entity_result_is_sqlalchemys(maker: Maker, rows: int) -> None:
    # a single-entity ORM result freezes its raw rows, as SQLAlchemy's does (which
    # keeps them even under unique(): compared with the installed SQLAlchemy, not fixed)
    entities = select(User).join(User.addresses).order_by(Address.id)
    for apply in (lambda r: r, lambda r: r.unique()):
        async with maker() as session:
            frozen = await apply(await session.stream(entities)).freeze()
            ours = [(type(row[0]), row[0].id) for row in frozen().all()]
            theirs = await session.run_sync(
                lambda sync, apply=apply: [
                    (type(row[0]), row[0].id) for row in apply(sync.execute(entities)).freeze()()
                ]
            )
        assert ours == theirs and ours[0] == (User, 1)


async def test_async_for_over_a_unique_orm_stream(maker: Maker, rows: int) -> None:
    # on PostgreSQL the ORM refuses sized fetches from a server-side cursor under
    # unique(); the stream is then read in one hop, as SQLAlchemy's async for reads it
    async with maker() as session:
        result = (await session.stream(_joined)).columns("name").unique()
        assert [tuple(row) async for row in result] == [("u001",)]
        users = (await session.stream(select(User).join(User.addresses))).unique().scalars()
        assert [user.id async for user in users] == [1]


async def test_freeze_after_rows_were_read_is_refused(maker: Maker, rows: int) -> None:
    async with maker() as session:
        result = await session.stream(ordered)
        await result.fetchone()
        with pytest.raises(sa_exc.InvalidRequestError, match=r"freeze\(\) before reading"):
            await result.freeze()
        await result.close()


async def test_a_view_of_a_partly_read_result_starts_at_the_next_row(
    maker: Maker, rows: int
) -> None:
    # fetchone() fetched a whole chunk on the worker; the view must not skip it
    stmt = select(User.id, User.name).order_by(User.id)
    async with maker() as session:
        result = await session.stream(stmt)
        first = await result.fetchone()
        assert first is not None and first.id == 1
        assert [i async for i in result.scalars()] == list(range(2, rows + 1))
    async with maker() as session:
        result = await session.stream(stmt)
        assert len(await result.fetchmany(2)) == 2
        names = [m["name"] async for m in result.mappings()]
        assert names == [f"u{i:03d}" for i in range(3, rows + 1)]
    async with maker() as session:
        result = await session.stream(stmt)
        await result.fetchone()
        by_key = await result.scalars("name").all()
        assert by_key[0] == "u002" and len(by_key) == rows - 1


async def test_columns_or_unique_after_rows_were_fetched_is_refused(
    maker: Maker, rows: int
) -> None:
    async with maker() as session:
        result = await session.stream(select(User.id, User.name).order_by(User.id))
        await result.fetchone()
        with pytest.raises(sa_exc.InvalidRequestError, match=r"columns\(\) before reading"):
            result.columns("name")
        with pytest.raises(sa_exc.InvalidRequestError, match=r"would escape unique\(\)"):
            result.unique()
        scalars = result.scalars()
        with pytest.raises(sa_exc.InvalidRequestError, match=r"unique\(\)"):
            scalars.unique()
        assert len(await scalars.all()) == rows - 1


async def test_unique_applied_after_a_chunk_was_read_filters_the_rows_after_it(
    maker: Maker, rows: int
) -> None:
    # each of users 1-4 twice (once per address); yield_per=2: a chunk per user
    stmt = (
        select(User.name, Address.id.label("address_id"))
        .join(Address, true())
        .where(User.id <= 4)
        .order_by(User.name, Address.id)
    )
    async with maker() as session:
        result = await session.stream(stmt, execution_options={"yield_per": 2})
        first_chunk = [await result.fetchone(), await result.fetchone()]
        assert [r.name for r in first_chunk if r is not None] == ["u001", "u001"]
        # the buffer is empty: allowed, and it applies from here on, as in SQLAlchemy
        result.unique(lambda row: row.name)
        assert [r.name async for r in result] == ["u002", "u003", "u004"]


async def test_fetchmany_without_a_size_returns_what_the_sync_result_returns(
    engine: async_orm.AsyncEngine, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no yield_per: SQLAlchemy's streaming strategy returns every remaining row;
    # with yield_per: that many.  Not the chunk size async for uses (made small here).
    monkeypatch.setattr(async_orm.result, "DEFAULT_CHUNK", 10)
    for options in ({}, {"yield_per": 7}):
        async with engine.connect() as conn:

            def sync_count(c: Any, options: dict[str, Any] = options) -> int:
                sync_options = {"stream_results": True, **options}
                result = c.execute(ordered, execution_options=sync_options)
                try:
                    return len(result.fetchmany())
                finally:
                    result.close()

            expected = await conn.run_sync(sync_count)
            result = await conn.stream(ordered, execution_options=options)
            assert len(await result.fetchmany()) == expected
            await result.close()
        assert expected == (7 if options else rows)


async def test_streamed_rows_are_built_as_they_are_handed_out(maker: Maker, rows: int) -> None:
    # a chunk crosses the thread boundary as fetched; Row objects are made one at a time
    # (a chunk of a thousand live Rows per hop doubles the GC's work on a long stream)
    import gc

    def live_rows() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Row)

    async with maker() as session:
        result = await session.stream(select(User.id, User.name).order_by(User.id))
        before = live_rows()
        first = await result.fetchone()
        assert first is not None and first.id == 1
        assert len(result._buffer) == rows - 1  # the rest of the chunk is here...
        assert live_rows() - before <= 1  # ...but not as Row objects
        mappings = result.mappings()
        assert [m["id"] async for m in mappings] == list(range(2, rows + 1))
        assert live_rows() - before <= 2


async def test_close_and_closed(maker: Maker, rows: int) -> None:
    async with maker() as session:
        result = await session.stream(ordered)
        assert result.closed is False
        await result.fetchone()
        await result.close()
        assert result.closed is True
        with pytest.raises(sa_exc.ResourceClosedError):
            await result.fetchone()
        scalars = await session.stream_scalars(select(User.id))
        assert scalars.closed is False
        await scalars.close()
        assert scalars.closed is True
        mappings = (await session.stream(ordered)).mappings()
        await mappings.close()
        assert mappings.closed is True


# -- AsyncScalarResult and AsyncMappingResult --------------------------------------------


async def test_scalar_result_methods(maker: Maker, rows: int) -> None:
    async with maker() as session:
        users = await session.stream_scalars(select(User).order_by(User.id))
        assert isinstance(users, AsyncScalarResult)
        assert users.yield_per(20) is users
        two = await users.fetchmany(2)
        assert [u.id for u in two] == [1, 2]
        rest = await users.fetchall()
        assert len(rest) == rows - 2
        ids = select(User.id).order_by(User.id)
        assert await (await session.stream_scalars(ids)).all() == list(range(1, rows + 1))
        assert await (await session.stream_scalars(ids)).first() == 1
        one = select(User.id).where(User.id == 3)
        assert await (await session.stream_scalars(one)).one() == 3
        assert await (await session.stream_scalars(one)).one_or_none() == 3
        with pytest.raises(sa_exc.MultipleResultsFound):
            await (await session.stream_scalars(ids)).one()
        parts = [p async for p in (await session.stream_scalars(ids)).partitions(100)]
        assert [len(p) for p in parts] == [100, 100, 50]
        joined = select(User).join(User.addresses)
        assert len(await (await session.stream_scalars(joined)).unique().all()) == 1
        assert [u async for u in await session.stream_scalars(one)] == [3]


async def test_mapping_result_methods(maker: Maker, rows: int) -> None:
    async with maker() as session:
        mappings = (await session.stream(ordered)).mappings()
        assert list(mappings.keys()) == ["id", "name"]
        assert mappings.yield_per(30) is mappings
        assert (await mappings.fetchone())["id"] == 1  # type: ignore[index]
        assert [m["id"] for m in await mappings.fetchmany(2)] == [2, 3]
        assert len(await mappings.fetchall()) == rows - 3
        fresh = lambda: session.stream(ordered)  # noqa: E731
        assert len(await (await fresh()).mappings().all()) == rows
        assert (await (await fresh()).mappings().first()) == {"id": 1, "name": "u001"}
        only = select(User.id, User.name).where(User.id == 5)
        assert (await (await session.stream(only)).mappings().one())["name"] == "u005"
        assert (await (await session.stream(only)).mappings().one_or_none()) is not None
        names = (await fresh()).mappings().columns("name")
        assert await names.first() == {"name": "u001"}
        parts = [p async for p in (await fresh()).mappings().partitions(125)]
        assert [len(p) for p in parts] == [125, 125]
        joined = select(User.name).join(User.addresses)
        assert len(await (await session.stream(joined)).mappings().unique().all()) == 1
        assert len([m async for m in (await fresh()).mappings()]) == rows


# -- through AsyncConnection ---------------------------------------------------------


async def test_connection_stream_and_stream_scalars(
    engine: async_orm.AsyncEngine, rows: int
) -> None:
    async with engine.connect() as conn:
        async with conn.stream(ordered) as result:
            assert isinstance(result, AsyncResult)
            assert (await result.fetchone()).id == 1  # type: ignore[union-attr]
        assert result.closed  # async with closes it
        result = await conn.stream(ordered)
        assert len([r async for r in result]) == rows
        async with conn.stream_scalars(select(User.name).order_by(User.id)) as names:
            assert await names.first() == "u001"
        scalars = await conn.stream_scalars(select(func.count()).select_from(User))
        assert await scalars.one() == rows
        one = select(User.id).where(User.id == bindparam("uid"))
        assert await (await conn.stream_scalars(one, {"uid": 9})).one() == 9
