"""``python -m async_orm demo``.

The demo runs a small, realistic workload: a blog with authors and posts, a
burst of concurrent "requests" each with a session of its own that count a
view atomically in the database, eager loading, the loop guard catching a
lazy load, and several tasks sharing one session in order.  It uses a SQLite
file in a temporary directory unless ``--url`` names another database (e.g.
``postgresql+psycopg://user@host/db``), where it creates its own two tables
and drops them at the end.  It exits with status 1 if the views it counted do
not add up, and 2 (with a one-line message) if the database cannot be used.

The benchmark suite is not part of the package: ``python -m async_orm bench``
only says how to run it from a checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import ForeignKey, String, event, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from sqlalchemy.pool import QueuePool

import async_orm
from async_orm import AsyncAttrs, AsyncEngine, async_sessionmaker, create_async_engine
from async_orm.exc import EventLoopIOError


class _Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(_Base):
    __tablename__ = "async_orm_demo_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")


class Post(_Base):
    __tablename__ = "async_orm_demo_post"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    views: Mapped[int] = mapped_column(default=0)
    author_id: Mapped[int] = mapped_column(ForeignKey("async_orm_demo_author.id"))
    author: Mapped[Author] = relationship(back_populates="posts")


def _say(line: str = "") -> None:
    print(line, flush=True)


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident}"


#: What to install for a sync driver's module, when the demo's URL names a missing one.
_INSTALL = {
    "psycopg": "pip install 'async_orm[postgresql]'",
    "pymysql": "pip install 'async_orm[mysql]'",
    "MySQLdb": "pip install mysqlclient",
    "psycopg2": "pip install psycopg2-binary",
}

REQUESTS = 8


class DemoError(Exception):
    """The demo cannot run with this URL; the message is one line for the user."""


def _engine(url: str) -> AsyncEngine:
    u = make_url(url)
    memory = u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:")
    pool = {} if memory else {"pool_size": 4, "max_overflow": 0}
    try:
        return create_async_engine(u, **pool)
    except ModuleNotFoundError as error:
        module = error.name or str(error)
        install = _INSTALL.get(module, f"pip install {module}")
        raise DemoError(
            f"{u.drivername} needs the {module} driver, which is not installed: {install}"
        ) from None


async def demo(url: str) -> int:
    engine = _engine(url)
    safe_url = engine.url.render_as_string(hide_password=True)
    _say(f"async_orm {async_orm.__version__} demo on {safe_url}")
    _say(
        f"  driver: {engine.dialect.name}+{engine.driver} (sync), greenlet imported: "
        f"{'greenlet' in sys.modules}"
    )

    # which threads run SQL statements
    statement_threads: set[int] = set()

    def record(*_args: object) -> None:
        statement_threads.add(threading.get_ident())

    event.listen(engine.sync_engine, "before_cursor_execute", record)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(_Base.metadata.drop_all)
            await conn.run_sync(_Base.metadata.create_all)
    except sa_exc.DBAPIError as error:
        await engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DemoError(f"cannot use {safe_url}: {reason}") from None
    Session = async_sessionmaker(engine, expire_on_commit=False)

    _say("\n1. Setup: one session adds 3 authors with 2 posts each, then commits.")
    async with Session.begin() as session:
        for name in ("ada", "grace", "linus"):
            session.add(
                Author(name=name, posts=[Post(title=f"{name}'s post {i}") for i in (1, 2)])
            )
    _say("   committed.")

    returning = engine.dialect.update_returning
    _say(f"\n2. {REQUESTS} concurrent requests, each with a session of its own, count a view:")
    _say("   UPDATE ... SET views = views + 1 adds in the database, so two requests on the")
    _say("   same post both count; with post.views += 1 in Python both would read the same")
    _say("   value and write the same value + 1, and one view would be lost.")
    threads_by_request: dict[int, int] = {}

    async def request(n: int) -> str:
        post_id = n % 6 + 1
        add_view = update(Post).where(Post.id == post_id).values(views=Post.views + 1)
        async with Session() as session:
            if returning:
                views = await session.scalar(add_view.returning(Post.views))
            else:  # no UPDATE ... RETURNING (MySQL, MariaDB): read it back in the transaction
                await session.execute(add_view)
                views = await session.scalar(select(Post.views).where(Post.id == post_id))
            await session.commit()
            ident = await session.run_sync(lambda _s: threading.get_ident())
            threads_by_request[n] = ident
            return (
                f"   request {n}: post {post_id} now has {views} view(s), "
                f"ran on {_thread_name(ident)}"
            )

    start = time.perf_counter()
    for line in await asyncio.gather(*(request(n) for n in range(REQUESTS))):
        _say(line)
    elapsed = time.perf_counter() - start
    pool = engine.pool
    capacity = f" (a pool of {pool.size()} connections)" if isinstance(pool, QueuePool) else ""
    _say(
        f"   {len(threads_by_request)} requests, {len(set(threads_by_request.values()))} distinct "
        f"worker threads{capacity}, {elapsed * 1000:.0f} ms; the event loop thread ran no SQL."
    )

    _say("\n3. Eager loading: authors with their posts in two queries (selectinload).")
    async with Session() as session:
        authors = (
            await session.scalars(
                select(Author).options(selectinload(Author.posts)).order_by(Author.id)
            )
        ).all()
        for author in authors:
            _say(f"   {author.name}: {', '.join(p.title for p in author.posts)}")

    _say("\n4. A lazy load from async code is refused instead of blocking the event loop:")
    async with Session() as session:
        first = await session.get(Author, 1)
        assert first is not None
        author = first
        try:
            author.posts  # noqa: B018 - the lazy load is the point
        except EventLoopIOError as error:
            _say(f"   EventLoopIOError: {str(error).split('. ', 1)[0]}.")
        posts = await author.awaitable_attrs.posts
        _say(f"   await author.awaitable_attrs.posts -> {len(posts)} posts, loaded on the worker.")

    _say("\n5. Three tasks share one session; their calls run in the order they were made:")
    async with Session() as session:
        order: list[str] = []

        async def fetch(label: str, post_id: int) -> None:
            post = await session.get(Post, post_id)
            order.append(f"{label}(post {post.id if post else None})")

        await asyncio.gather(fetch("A", 1), fetch("B", 2), fetch("C", 3))
        _say(f"   completion order: {' -> '.join(order)}")
        total = await session.scalar(select(func.sum(Post.views)))
        _say(f"   total views recorded: {total} (expected {REQUESTS})")

    if engine.dialect.name != "sqlite":  # leave a shared server as we found it
        async with engine.begin() as conn:
            await conn.run_sync(_Base.metadata.drop_all)
    await engine.dispose()
    on_loop = threading.get_ident() in statement_threads
    where = "and on the event loop thread too (a bug!)" if on_loop else "never on the loop thread"
    _say(
        f"\nDone: SQL ran on {len(statement_threads)} worker thread(s), {where}; "
        f"greenlet imported: {'greenlet' in sys.modules}."
    )
    if total != REQUESTS:
        _say(f"FAILED: {REQUESTS} requests counted a view each, but the posts total {total}.")
        return 1
    return 0


BENCH_MOVED = (
    "The benchmark suite is not part of the async_orm package. From an async_orm "
    "checkout: pip install -e . -e ./benchmarks && python -m async_orm_bench --help"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m async_orm")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_p = sub.add_parser("demo", help="run the demo (SQLite in a temporary directory)")
    demo_p.add_argument("--url", help="a sync database URL, e.g. postgresql+psycopg://...")
    sub.add_parser("bench", help="how to run the benchmark suite (not installed)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        print(BENCH_MOVED, file=sys.stderr)
        return 2
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.url:
            return asyncio.run(demo(args.url))
        with tempfile.TemporaryDirectory(prefix="async_orm_demo_") as tmp:
            return asyncio.run(demo(f"sqlite:///{Path(tmp) / 'demo.db'}"))
    except (DemoError, sa_exc.ArgumentError) as error:
        print(f"python -m async_orm demo: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
