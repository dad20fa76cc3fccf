"""``python -m async_orm demo``.

The demo runs a small, realistic workload: a blog with authors and posts, a
burst of concurrent "requests" each with a session of its own, eager loading,
the loop guard catching a lazy load, and several tasks sharing one session in
order.  It uses a SQLite file in a temporary directory unless ``--url`` names
another database (e.g. ``postgresql+psycopg://user@host/db``).

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

from sqlalchemy import ForeignKey, String, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

import async_orm
from async_orm import AsyncAttrs, async_sessionmaker, create_async_engine
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


async def demo(url: str) -> int:
    engine = create_async_engine(url, pool_size=4, max_overflow=0)
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

    async with engine.begin() as conn:
        await conn.run_sync(_Base.metadata.drop_all)
        await conn.run_sync(_Base.metadata.create_all)
    Session = async_sessionmaker(engine, expire_on_commit=False)

    _say("\n1. Setup: one session adds 3 authors with 2 posts each, then commits.")
    async with Session.begin() as session:
        for name in ("ada", "grace", "linus"):
            session.add(
                Author(name=name, posts=[Post(title=f"{name}'s post {i}") for i in (1, 2)])
            )
    _say("   committed.")

    _say("\n2. Eight concurrent requests, each with a session of its own:")
    threads_by_request: dict[int, int] = {}

    async def request(n: int) -> str:
        async with Session() as session:
            post = await session.get(Post, n % 6 + 1)
            assert post is not None
            post.views += 1
            await session.commit()
            ident = await session.run_sync(lambda _s: threading.get_ident())
            threads_by_request[n] = ident
            return (
                f"   request {n}: post {post.id} now has {post.views} view(s), "
                f"ran on {_thread_name(ident)}"
            )

    start = time.perf_counter()
    for line in await asyncio.gather(*(request(n) for n in range(8))):
        _say(line)
    elapsed = time.perf_counter() - start
    _say(
        f"   {len(threads_by_request)} requests, {len(set(threads_by_request.values()))} distinct "
        f"worker threads (the engine allows {engine._limiter.capacity} at once), "
        f"{elapsed * 1000:.0f} ms; the event loop thread ran no SQL."
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
            _say(f"   EventLoopIOError: {str(error).split(' (async_orm errors')[0]}")
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
        _say(f"   total views recorded: {total}")

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
    if args.url:
        return asyncio.run(demo(args.url))
    with tempfile.TemporaryDirectory(prefix="async_orm_demo_") as tmp:
        return asyncio.run(demo(f"sqlite:///{Path(tmp) / 'demo.db'}"))


if __name__ == "__main__":
    raise SystemExit(main())
