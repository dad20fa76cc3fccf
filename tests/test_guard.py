"""Invariant 3: database I/O that would run on the event loop thread is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest
from sqlalchemy import event, select, text
from sqlalchemy import exc as sa_exc

import async_orm
from async_orm.exc import EventLoopIOError
from tests.models import User

Maker = async_orm.async_sessionmaker[async_orm.AsyncSession]


async def _user_with_address(maker: Maker) -> None:
    from tests.models import Address

    async with maker.begin() as session:
        session.add(User(id=5, name="five", addresses=[Address(email="five@x")]))


async def test_lazy_load_on_the_loop_names_class_attribute_instance_and_fixes(
    maker: Maker,
) -> None:
    await _user_with_address(maker)
    async with maker() as session:
        user = await session.get(User, 5)
        assert user is not None
        with pytest.raises(EventLoopIOError) as info:
            user.addresses  # noqa: B018
    message = str(info.value)
    assert "User.addresses on <User id=5>" in message
    assert "selectinload(User.addresses)" in message
    assert "await obj.awaitable_attrs.addresses" in message
    assert "session.run_sync(fn)" in message
    assert isinstance(info.value, sa_exc.MissingGreenlet)


async def test_expired_attribute_after_commit_is_refused(engine: async_orm.AsyncEngine) -> None:
    maker = async_orm.async_sessionmaker(engine)  # expire_on_commit=True
    async with maker() as session:
        user = User(id=1, name="one")
        session.add(user)
        await session.commit()
        with pytest.raises(EventLoopIOError, match=r"<User id=1>.*expired"):
            user.name  # noqa: B018
        await session.refresh(user)
        assert user.name == "one"


async def test_sync_session_use_from_async_code_is_refused(maker: Maker) -> None:
    async with maker() as session:
        with pytest.raises(EventLoopIOError, match="event loop"):
            session.sync_session.execute(text("select 1"))
        session.add(User(id=1, name="pending"))
        with pytest.raises(EventLoopIOError, match="flush"):
            session.sync_session.flush()
        await session.rollback()


async def test_core_statement_on_the_loop_through_the_sync_engine_is_refused(
    engine: async_orm.AsyncEngine,
) -> None:
    # connecting on the loop is refused before the checkout (test_owner_state); a
    # connection made under the opt-out still has every statement refused
    with async_orm.allow_loop_io():
        conn = engine.sync_engine.connect()
    try:
        with pytest.raises(EventLoopIOError, match="select 42"):
            conn.execute(text("select 42"))
    finally:
        with async_orm.allow_loop_io():
            conn.close()


@pytest.mark.parametrize(
    "how",
    ["execute", "executemany", "no_parameters"],
)
async def test_every_driver_entry_point_is_guarded_on_the_loop(
    engine: async_orm.AsyncEngine, how: str
) -> None:
    # SQLAlchemy reaches the driver through the dialect's do_execute, do_executemany
    # and do_execute_no_params; each is refused on the loop, and nothing is written
    table = User.__table__
    with async_orm.allow_loop_io():
        conn = engine.sync_engine.connect()
    try:
        with pytest.raises(EventLoopIOError, match="event loop thread"):
            if how == "execute":
                conn.execute(table.insert(), {"id": 1, "name": "one"})
            elif how == "executemany":
                conn.execute(table.insert(), [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}])
            else:
                conn.exec_driver_sql(
                    "INSERT INTO users (id, name) VALUES (4, 'd')",
                    execution_options={"no_parameters": True},
                )
    finally:
        with async_orm.allow_loop_io():
            conn.rollback()
            conn.close()
    async with engine.connect() as aconn:
        assert (await aconn.execute(text("SELECT count(*) FROM users"))).scalar() == 0


async def test_a_guarded_session_class_is_not_guarded_twice(maker: Maker) -> None:
    async with maker() as session:
        guarded = type(session.sync_session)
        async with async_orm.AsyncSession(session.bind, sync_session_class=guarded) as again:
            assert type(again.sync_session) is guarded
            assert (await again.execute(text("SELECT 1"))).scalar() == 1


async def test_allow_loop_io_opts_out(maker: Maker, engine: async_orm.AsyncEngine) -> None:
    await _user_with_address(maker)
    async with maker() as session:
        user = await session.get(User, 5)
        assert user is not None
        with async_orm.allow_loop_io():
            assert [a.email for a in user.addresses] == ["five@x"]
    with async_orm.allow_loop_io(), engine.sync_engine.connect() as conn:
        assert conn.execute(text("select 7")).scalar() == 7


def test_environment_variable_opts_out(tmp_path: object) -> None:
    code = (
        "import asyncio, sqlalchemy as sa, async_orm\n"
        "async def main():\n"
        "    engine = async_orm.create_async_engine('sqlite://')\n"
        "    with engine.sync_engine.connect() as conn:\n"
        "        print(conn.execute(sa.text('select 3')).scalar())\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, ASYNC_ORM_ALLOW_LOOP_IO="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


async def test_the_guard_does_not_touch_sync_code_off_the_loop(
    engine: async_orm.AsyncEngine,
) -> None:
    def plain_sync() -> int:
        with engine.sync_engine.connect() as conn:
            return int(conn.execute(text("select 9")).scalar_one())

    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(plain_sync()))
    t.start()
    t.join(30)
    assert result == [9]


async def test_guard_checks_once_per_statement_not_per_row(
    maker: Maker, engine: async_orm.AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with maker.begin() as session:
        session.add_all([User(id=i, name=f"u{i}") for i in range(1, 201)])
    calls = 0
    real = asyncio._get_running_loop

    def counting() -> asyncio.AbstractEventLoop | None:
        nonlocal calls
        calls += 1
        return real()

    statements = 0

    def count_statement(*args: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count_statement)
    # the ORM-level and the Core-level checks each start with this one C call
    monkeypatch.setattr(async_orm._guard, "_get_running_loop", counting)
    try:
        async with maker() as session:
            users = (await session.scalars(select(User))).all()
    finally:
        monkeypatch.undo()
        event.remove(engine.sync_engine, "before_cursor_execute", count_statement)
    assert len(users) == 200
    assert statements >= 1
    # per statement: the ORM check, the autoflush check, the driver-level check; per
    # checkout: one more; never per row (200 rows here)
    assert 1 <= calls <= 3 * statements + 1


async def test_refused_sync_commit_leaves_the_session_usable(maker: Maker) -> None:
    async with maker() as session:
        await session.execute(text("select 1"))  # a transaction holding a connection
        with pytest.raises(EventLoopIOError, match="COMMIT"):
            session.sync_session.commit()
        assert (await session.execute(text("select 2"))).scalar() == 2
