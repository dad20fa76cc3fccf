"""AsyncConnection under asyncio and Trio: execute, commit and rollback, begin blocks,
savepoints, and SQLAlchemy's refusal of SQL after a block's transaction was ended
inside the block."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text

import async_orm
from tests.anyloop.conftest import LoopRun
from tests.models import User

CLOSED_INSIDE = "Can't operate on closed transaction inside context manager"


async def _ids(engine: async_orm.AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.scalars(select(User.id).order_by(User.id))).all())


def test_execute_commit_rollback_and_a_savepoint_rollback_keeps_the_outer_rows(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        loop_thread = threading.get_ident()
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 41 + 1")) == 42
            await conn.execute(insert(User).values(id=1, name="committed"))  # autobegin
            assert conn.in_transaction()
            await conn.commit()
            assert not conn.in_transaction()
            await conn.execute(insert(User).values(id=2, name="rolled back"))
            await conn.rollback()

            trans = await conn.begin()
            await conn.execute(insert(User).values(id=3, name="outer"))
            savepoint = await conn.begin_nested()
            assert conn.in_nested_transaction()
            await conn.execute(insert(User).values(id=4, name="savepoint"))
            await savepoint.rollback()
            assert trans.is_active and not conn.in_nested_transaction()
            inside = (await conn.scalars(select(User.id).order_by(User.id))).all()
            assert inside == [1, 3]  # the outer row survived the savepoint's rollback
            await trans.commit()

            async with conn.begin():
                await conn.execute(insert(User).values(id=5, name="block"))
                async with conn.begin_nested():
                    await conn.execute(insert(User).values(id=6, name="released savepoint"))
                with pytest.raises(LookupError, match="abandon the block"):
                    async with conn.begin_nested():
                        await conn.execute(insert(User).values(id=7, name="failed savepoint"))
                        raise LookupError("abandon the block")
            thread = await conn.run_sync(lambda sync_conn: threading.get_ident())
            assert thread != loop_thread
        assert await _ids(engine) == [1, 3, 5, 6]

        async with engine.begin() as conn:
            await conn.execute(insert(User).values(id=8, name="engine.begin"))
        with pytest.raises(LookupError, match="abandon the block"):
            async with engine.begin() as conn:
                await conn.execute(insert(User).values(id=9, name="engine.begin failed"))
                raise LookupError("abandon the block")
        assert await _ids(engine) == [1, 3, 5, 6, 8]

    run(body)


def test_sql_after_the_block_transaction_was_closed_inside_the_block_is_refused(
    run: LoopRun,
) -> None:
    async def body(engine: async_orm.AsyncEngine) -> None:
        async with engine.connect() as conn:
            with pytest.raises(sa_exc.InvalidRequestError, match=CLOSED_INSIDE):
                async with conn.begin() as trans:
                    await conn.execute(insert(User).values(id=1, name="committed"))
                    await trans.commit()
                    await conn.execute(insert(User).values(id=2, name="refused"))
            with pytest.raises(sa_exc.InvalidRequestError, match=CLOSED_INSIDE):
                async with conn.begin():
                    await conn.execute(insert(User).values(id=3, name="rolled back"))
                    await conn.rollback()
                    await conn.execute(select(1))
            assert not conn.in_transaction()
            assert await conn.scalar(select(func.count()).select_from(User)) == 1
            await conn.rollback()
        with pytest.raises(sa_exc.InvalidRequestError, match=CLOSED_INSIDE):
            async with engine.begin() as conn:
                await conn.commit()
                await conn.execute(select(1))
        assert await _ids(engine) == [1]

    run(body)
