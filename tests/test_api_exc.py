"""async_orm.exc: each error subclasses the SQLAlchemy error that code written
for ``sqlalchemy.ext.asyncio`` already catches, and each message, raised for
real, says what happened and what to do, and names its section of the Errors page."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

import async_orm
from async_orm import AsyncSession
from async_orm import exc as async_exc
from tests.models import User

Maker = async_orm.async_sessionmaker[AsyncSession]
HAS_21 = hasattr(Session, "delete_all")

BASES: list[tuple[str, type[Exception]]] = [
    ("AsyncMethodRequired", sa_exc.InvalidRequestError),
    ("AsyncContextNotStarted", sa_exc.InvalidRequestError),
    ("AsyncContextAlreadyStarted", sa_exc.InvalidRequestError),
    ("EventLoopIOError", sa_exc.MissingGreenlet),
    ("WorkerSlotTimeout", sa_exc.TimeoutError),
    ("CrossLoopError", sa_exc.InvalidRequestError),
    ("ReentrantCallError", sa_exc.InvalidRequestError),
    ("RollbackRequiredAfterCancel", sa_exc.PendingRollbackError),
    ("AsyncDriverURLError", sa_exc.ArgumentError),
] + ([("AsyncBindNotFound", sa_exc.InvalidRequestError)] if HAS_21 else [])


@pytest.mark.parametrize(("name", "base"), BASES)
def test_error_subclasses_what_existing_code_catches(name: str, base: type[Exception]) -> None:
    error = getattr(async_exc, name)
    assert issubclass(error, base)
    assert issubclass(error, sa_exc.SQLAlchemyError)
    assert name in async_exc.__all__


def _check_message(error: BaseException, *hints: str) -> None:
    text = str(error)
    for hint in hints:
        assert hint.lower() in text.lower(), (
            f"{type(error).__name__} message lacks {hint!r}: {text}"
        )
    assert "see 'Errors reference' in the async_orm docs, section" in text, (
        f"no pointer to the errors page: {text}"
    )


async def test_not_started_and_already_started(engine: async_orm.AsyncEngine) -> None:
    conn = engine.connect()
    with pytest.raises(async_exc.AsyncContextNotStarted) as not_started:
        conn.in_transaction()
    _check_message(not_started.value, "await", "async with")
    await conn.start()
    try:
        with pytest.raises(async_exc.AsyncContextAlreadyStarted) as again:
            await conn.start()
        trans = await conn.begin()
        with pytest.raises(async_exc.AsyncContextAlreadyStarted) as trans_again:
            await trans.start()
        await trans.rollback()
    finally:
        await conn.close()
    # what to do: use the object as it is, without awaiting / starting it again
    _check_message(again.value, "already started", "await")
    _check_message(trans_again.value, "already started", "await")


async def test_async_method_required_points_to_stream(db_url: tuple[str, dict[str, Any]]) -> None:
    url, kwargs = db_url
    with pytest.raises(async_exc.AsyncMethodRequired) as caught:
        async_orm.create_async_engine(url, server_side_cursors=True, **kwargs)
    assert "stream()" in str(caught.value)


def test_async_driver_url_names_the_sync_url() -> None:
    with pytest.raises(async_exc.AsyncDriverURLError) as caught:
        async_orm.create_async_engine("postgresql+asyncpg://u:secret@db/app")
    _check_message(caught.value, "postgresql+psycopg://", "asyncpg")
    assert "secret" not in str(caught.value)  # the password is hidden


async def test_event_loop_io_names_the_attribute_and_the_three_ways_out(maker: Maker) -> None:
    async with maker.begin() as session:
        session.add(User(id=1, name="ann"))
    async with maker() as session:
        user = await session.get_one(User, 1)
        with pytest.raises(async_exc.EventLoopIOError) as caught:
            _ = user.addresses
        assert isinstance(caught.value, sa_exc.MissingGreenlet)
        _check_message(caught.value, "addresses", "selectinload", "awaitable_attrs", "run_sync")


async def test_worker_slot_timeout_says_how_to_get_more_slots(
    db_url: tuple[str, dict[str, Any]],
) -> None:
    url, kwargs = db_url
    engine = async_orm.create_async_engine(url, max_workers=1, worker_timeout=0.05, **kwargs)
    holder, waiter = AsyncSession(engine), AsyncSession(engine)
    try:
        await holder.execute(select(1))  # takes the only slot
        with pytest.raises(async_exc.WorkerSlotTimeout) as caught:
            await waiter.execute(select(1))
        _check_message(caught.value, "max_workers", "worker_timeout", "close")
    finally:
        await holder.close()
        await waiter.close()
        await engine.dispose()


async def test_reentrant_call_from_run_sync_is_refused(maker: Maker) -> None:
    async with maker() as session:

        def inner(sync: Session) -> Any:
            return asyncio.run(session.execute(select(1)))  # awaits its own session

        with pytest.raises(async_exc.ReentrantCallError) as caught:
            await session.run_sync(inner)
        _check_message(caught.value, "run_sync", "deadlock")
        assert await session.scalar(select(1)) == 1  # the session still works


async def test_rollback_required_after_a_cancelled_call(maker: Maker) -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking(sync: Session) -> None:
        entered.set()
        release.wait(10)

    async with maker() as session:
        task = asyncio.create_task(session.run_sync(blocking))
        await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        # one loop turn: the task handles the cancellation (the call is still running,
        # so it must wait for the worker), and only then is the worker released
        await asyncio.sleep(0)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(async_exc.RollbackRequiredAfterCancel) as caught:
            await session.execute(select(1))
        assert isinstance(caught.value, sa_exc.PendingRollbackError)
        _check_message(caught.value, "rollback()")
        await session.rollback()
        assert await session.scalar(select(1)) == 1


async def test_cross_loop_use_is_refused(maker: Maker) -> None:
    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def blocking(sync: Session) -> None:
        entered.set()
        release.wait(10)

    session = maker()

    def other_loop() -> None:
        try:
            asyncio.run(session.run_sync(blocking))
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=other_loop)
    thread.start()
    try:
        await asyncio.to_thread(entered.wait, 10)
        with pytest.raises(async_exc.CrossLoopError) as caught:
            await session.execute(select(1))
        _check_message(caught.value, "event loop")
    finally:
        release.set()
        await asyncio.to_thread(thread.join, 10)
        await session.close()
    assert errors == []


async def test_bind_not_found_says_where_to_establish_binds(maker: Maker) -> None:
    if not HAS_21:  # raised by get_async_bind, which SQLAlchemy 2.0 does not have
        assert not hasattr(AsyncSession, "get_async_bind")
        return
    import sqlalchemy as sa

    stranger = sa.create_engine("sqlite://")
    async with maker() as session:
        session.sync_session.bind = stranger
        with pytest.raises(async_exc.AsyncBindNotFound) as caught:
            session.get_async_bind()
        _check_message(caught.value, "AsyncSession")
    stranger.dispose()
