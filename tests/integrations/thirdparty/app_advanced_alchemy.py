"""An advanced-alchemy repository (``SQLAlchemyAsyncRepository``) configured by
``SQLAlchemyAsyncConfig``, with the session listeners that config registers
(created/updated timestamps in ``before_flush``, and the cache invalidation
listener with a dogpile memory cache; the file-object listener is off, as this
app stores no files, and uses ``asyncio.create_task()`` the same way), on a
sync URL through async_orm.

advanced-alchemy's ``AsyncCacheListener.after_commit`` calls
``asyncio.create_task()``; async_orm runs listeners on the session's worker
thread, where that fails with "no running event loop".  With ``--migrated`` the
listener is registered in its one-line-migrated form (``create_task_in_loop``);
without it the script checks that commit raises that error.
"""

import async_orm._standin

async_orm._standin.install_as_sqlalchemy_asyncio()  # before the libraries are imported

import asyncio  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from _common import database_url, report_greenlet  # noqa: E402
from advanced_alchemy import _listeners  # noqa: E402
from advanced_alchemy.base import BigIntAuditBase  # noqa: E402
from advanced_alchemy.cache import CacheConfig  # noqa: E402
from advanced_alchemy.config import AsyncSessionConfig, SQLAlchemyAsyncConfig  # noqa: E402
from advanced_alchemy.filters import LimitOffset  # noqa: E402
from advanced_alchemy.repository import SQLAlchemyAsyncRepository  # noqa: E402
from sqlalchemy import String, event  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402
from sqlalchemy.orm import Mapped, Session, mapped_column  # noqa: E402

from async_orm import create_task_in_loop  # noqa: E402

MIGRATED = "--migrated" in sys.argv


class Author(BigIntAuditBase):
    __tablename__ = "author"
    name: Mapped[str] = mapped_column(String(100))


class AuthorRepository(SQLAlchemyAsyncRepository[Author]):
    model_type = Author


cache_tasks: list[object] = []


def after_commit_migrated(session: Session) -> None:
    """advanced-alchemy's AsyncCacheListener.after_commit, with its one asyncio
    line changed: asyncio.create_task(...) -> create_task_in_loop(...)."""
    if not _listeners.AsyncCacheListener._is_listener_enabled(session):
        return
    tracker = _listeners.get_cache_tracker(session, create=False)
    if tracker:
        task = create_task_in_loop(tracker.commit_async())  # was: asyncio.create_task(...)
        cache_tasks.append(task)
        session.info.pop(_listeners._CACHE_TRACKER_KEY, None)


if MIGRATED:
    _listeners.AsyncCacheListener.after_commit = staticmethod(after_commit_migrated)  # type: ignore[method-assign,assignment]

config = SQLAlchemyAsyncConfig(
    connection_string=database_url(),
    session_config=AsyncSessionConfig(expire_on_commit=False),
    cache_config=CacheConfig(backend="dogpile.cache.memory"),
    enable_file_object_listener=False,
    create_all=False,
)
statement_threads: set[int] = set()
loop_thread = threading.get_ident()


async def use_the_repository(repo: AuthorRepository, session: AsyncSession) -> None:
    author = await repo.add(Author(name="Agatha Christie"), auto_commit=True)
    # the before_flush listener set the audit timestamps
    assert author.id is not None and author.created_at is not None
    assert author.updated_at is not None
    await repo.add_many([Author(name="Ursula K. Le Guin"), Author(name="Terry Pratchett")])
    await session.commit()

    authors, total = await repo.list_and_count(LimitOffset(limit=2, offset=0))
    assert total == 3 and len(authors) == 2, (authors, total)
    fetched = await repo.get(author.id)
    assert fetched.name == "Agatha Christie"

    created_at = fetched.updated_at
    fetched.name = "Dame Agatha Christie"
    updated = await repo.update(fetched, auto_commit=True)  # queues a cache invalidation
    assert updated.updated_at >= created_at
    assert (await repo.get_one(name="Dame Agatha Christie")).id == author.id

    await repo.delete(author.id, auto_commit=True)
    assert await repo.count() == 2
    assert await repo.get_one_or_none(name="Dame Agatha Christie") is None


async def main() -> None:
    report_greenlet()
    engine = config.get_engine()

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _record_thread(*_args: object) -> None:
        statement_threads.add(threading.get_ident())

    async with engine.begin() as conn:
        await conn.run_sync(Author.metadata.create_all)

    async with config.get_session() as session:
        assert isinstance(session, AsyncSession)
        repo = AuthorRepository(session=session)
        if MIGRATED:
            await use_the_repository(repo, session)
        else:
            try:
                await use_the_repository(repo, session)
            except RuntimeError as error:
                assert "no running event loop" in str(error), error
            else:
                raise AssertionError("the unmigrated asyncio listener did not fail on the worker")
            await session.close()
            await engine.dispose()
            print("OK")
            return

    # the cache invalidations scheduled by the after_commit listener ran on this loop
    assert cache_tasks, "the cache listener scheduled nothing"
    for task in cache_tasks:
        await asyncio.wrap_future(task)  # type: ignore[arg-type]

    await engine.dispose()
    assert statement_threads and loop_thread not in statement_threads, (
        "a statement ran on the event loop thread"
    )
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
