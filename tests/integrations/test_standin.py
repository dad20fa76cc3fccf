"""install_as_sqlalchemy_asyncio(), the greenlet helpers it installs, and the
listener helpers (create_task_in_loop / call_soon_in_loop).

What changes sys.modules runs in a subprocess; the helpers themselves change
nothing process-wide and are tested here, on both backends.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

import async_orm
from async_orm import call_soon_in_loop, create_task_in_loop
from async_orm._standin import await_only, greenlet_spawn
from tests.conftest import StatementThreads
from tests.integrations.thirdparty import (
    ROOT,
    database_url,
    greenlet_importable,
    require,
    run_app,
)
from tests.test_parity import greenlet_dir  # noqa: F401  (the fixture)


def run_python(code: str, *, pythonpath: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join((*pythonpath, str(ROOT), env.get("PYTHONPATH", "")))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )


def check(completed: subprocess.CompletedProcess[str]) -> str:
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert completed.stdout.rstrip().endswith("OK"), output
    return output


# -- the stand-in (subprocesses) ---------------------------------------------------


def test_importing_async_orm_changes_nothing_until_called() -> None:
    check(
        run_python(
            """
            import sys
            import sqlalchemy.util, sqlalchemy.util.concurrency
            before = (sqlalchemy.util.greenlet_spawn, sqlalchemy.util.concurrency.await_only)
            import async_orm, async_orm._standin, async_orm.result
            assert not any(n.startswith("sqlalchemy.ext.asyncio") for n in sys.modules)
            after = (sqlalchemy.util.greenlet_spawn, sqlalchemy.util.concurrency.await_only)
            assert after == before
            import sqlalchemy.ext
            assert "asyncio" not in vars(sqlalchemy.ext)
            print("OK")
            """
        )
    )


def test_install_resolves_every_submodule_and_is_idempotent() -> None:
    check(
        run_python(
            """
            import sys
            import async_orm
            from async_orm._standin import install_as_sqlalchemy_asyncio, greenlet_spawn
            install_as_sqlalchemy_asyncio()
            def standin():
                return {n: m for n, m in sys.modules.items() if n.startswith("sqlalchemy.ext.")}
            first = standin()
            install_as_sqlalchemy_asyncio()
            again = standin()
            assert first == again and len(first) == 6, first

            import sqlalchemy.ext.asyncio
            import sqlalchemy.ext.asyncio.engine, sqlalchemy.ext.asyncio.session
            import sqlalchemy.ext.asyncio.result, sqlalchemy.ext.asyncio.scoping
            import sqlalchemy.ext.asyncio.exc
            from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine, engine, exc
            from sqlalchemy.ext.asyncio.result import _ensure_sync_result
            from sqlalchemy.ext.asyncio.session import _EXECUTE_OPTIONS
            from sqlalchemy.util import greenlet_spawn as util_spawn
            from sqlalchemy.util.concurrency import greenlet_spawn as concurrency_spawn
            assert sqlalchemy.ext.asyncio is async_orm
            assert sqlalchemy.ext.asyncio.session is async_orm.session
            assert sqlalchemy.ext.asyncio.scoping is async_orm.scoping
            assert engine is async_orm.engine and exc is async_orm.exc
            assert AsyncSession is async_orm.AsyncSession
            assert util_spawn is concurrency_spawn is greenlet_spawn
            print("OK")
            """
        )
    )


def test_install_refuses_after_sqlalchemy_asyncio_was_imported_and_names_the_importer(
    tmp_path: Path,
    greenlet_dir: Path,  # noqa: F811
) -> None:
    (tmp_path / "early_library.py").write_text("from sqlalchemy.ext.asyncio import AsyncSession\n")
    completed = run_python(
        """
        import sys
        import early_library  # imports SQLAlchemy's own sqlalchemy.ext.asyncio
        import sqlalchemy.ext.asyncio
        from async_orm._standin import install_as_sqlalchemy_asyncio
        try:
            install_as_sqlalchemy_asyncio()
        except RuntimeError as error:
            print(error)
            assert sys.modules["sqlalchemy.ext.asyncio"] is not sys.modules["async_orm"]
            import sqlalchemy.util
            assert sqlalchemy.util.greenlet_spawn.__module__.startswith("sqlalchemy.util")
            print("OK")
        """,
        pythonpath=(str(tmp_path), str(greenlet_dir)),
    )
    output = check(completed)
    assert "called after SQLAlchemy's own sqlalchemy.ext.asyncio had been imported" in output
    assert "early_library" in output, output


def test_install_after_a_failed_import_without_greenlet() -> None:
    if greenlet_importable():
        pytest.skip("greenlet is importable in this run: the import cannot fail")
    completed = run_python(
        """
            try:
                import sqlalchemy.ext.asyncio
            except ImportError:
                pass  # SQLAlchemy 2.1 without greenlet
            else:
                print("imported")  # SQLAlchemy 2.0 imports it without greenlet
                raise SystemExit(0)
            from async_orm._standin import install_as_sqlalchemy_asyncio
            install_as_sqlalchemy_asyncio()
            import async_orm, sqlalchemy.ext.asyncio.engine
            assert sqlalchemy.ext.asyncio.engine is async_orm.engine
            print("OK")
            """
    )
    if completed.stdout.strip() == "imported":
        pytest.skip("this SQLAlchemy (2.0) imports sqlalchemy.ext.asyncio without greenlet")
    check(completed)


def test_sqlmodel_and_pagination_with_greenlet_installed(
    tmp_path: Path,
    greenlet_dir: Path,  # noqa: F811
) -> None:
    require("sqlmodel", "fastapi-pagination", "sqlakeyset", "fastapi", "httpx")
    env = {"PYTHONPATH": str(greenlet_dir)}
    with database_url("sqlite", tmp_path) as url:
        run_app("app_sqlmodel.py", url, env=env, greenlet=True)
    (tmp_path / "app.db").unlink()
    with database_url("sqlite", tmp_path) as url:
        run_app("app_fastapi_pagination.py", url, env=env, greenlet=True)


# -- greenlet_spawn / await_only (in process: they change nothing global) ----------


async def test_greenlet_spawn_runs_a_session_method_on_the_session_worker(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
    statement_threads: StatementThreads,
) -> None:
    async with maker() as session:
        result = await greenlet_spawn(session.sync_session.execute, sa.text("select 1 as x"))
        # buffered on the worker: reading it on the loop does no I/O
        assert result.all() == [(1,)]
    assert statement_threads.threads
    assert threading.get_ident() not in statement_threads.threads


async def test_greenlet_spawn_finds_the_session_of_orm_instances(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
) -> None:
    from tests.models import User

    async with maker() as session:
        session.add(User(name="ann"))
        await session.commit()
        users = (await session.scalars(sa.select(User))).all()
        seen: list[int] = []

        def build_page(items: list[Any]) -> list[str]:
            seen.append(threading.get_ident())
            session.sync_session.expire(items[0])
            return [u.name for u in items]  # a load: allowed only on the worker

        assert await greenlet_spawn(build_page, items=users) == ["ann"]
        assert seen and seen[0] != threading.get_ident()


async def test_greenlet_spawn_with_no_session_runs_inline_under_the_loop_guard() -> None:
    assert await greenlet_spawn(lambda a, b: a + b, 1, 2) == 3


async def test_greenlet_spawn_refuses_a_sync_only_session(
    engine: async_orm.AsyncEngine,
) -> None:
    refused = pytest.raises(sa.exc.InvalidRequestError, match="which no async_orm AsyncSession")
    with Session(engine.sync_engine) as sync, refused:
        await greenlet_spawn(sync.execute, sa.text("select 1"))


async def test_await_only_in_a_worker_function_runs_the_coroutine_on_the_loop(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
) -> None:
    loop_thread = threading.get_ident()

    async def on_the_loop() -> int:
        assert asyncio.get_running_loop() is loop
        return threading.get_ident()

    loop = asyncio.get_running_loop()
    async with maker() as session:

        def sync_code(sync: Session) -> tuple[int, int]:
            return threading.get_ident(), await_only(on_the_loop())

        worker_thread, coroutine_thread = await greenlet_spawn(sync_code, session.sync_session)
    assert coroutine_thread == loop_thread
    assert worker_thread != loop_thread


async def test_await_only_of_the_same_session_raises_instead_of_deadlocking(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
) -> None:
    async with maker() as session:

        def sync_code(sync: Session) -> Any:
            return await_only(session.execute(sa.text("select 1")))

        with pytest.raises(async_orm.exc.ReentrantCallError):
            await session.run_sync(sync_code)


async def test_await_only_on_the_loop_thread_raises_missing_greenlet() -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(sa.exc.MissingGreenlet, match="await_only"):
        await_only(nothing())


# -- create_task_in_loop / call_soon_in_loop -----------------------------------------


async def test_create_task_in_loop_from_after_commit_runs_on_the_awaiting_loop(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    ran_on: list[int] = []
    listener_threads: list[int] = []

    async def invalidate_cache() -> str:
        ran_on.append(threading.get_ident())
        done.set()
        return "invalidated"

    futures: list[Any] = []
    async with maker() as session:

        @event.listens_for(session.sync_session, "after_commit")
        def after_commit(sync: Session) -> None:
            listener_threads.append(threading.get_ident())
            futures.append(create_task_in_loop(invalidate_cache()))

        await session.execute(sa.text("select 1"))
        await session.commit()
        await done.wait()
        # the task may use the session again: it runs after the commit call
        await session.execute(sa.text("select 1"))
    assert ran_on == [threading.get_ident()]
    assert listener_threads and listener_threads[0] != threading.get_ident()
    assert await asyncio.wrap_future(futures[0], loop=loop) == "invalidated"


async def test_call_soon_in_loop_from_a_listener(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
) -> None:
    done = asyncio.Event()
    calls: list[tuple[str, int]] = []

    def record(what: str) -> None:
        calls.append((what, threading.get_ident()))
        done.set()

    async with maker() as session:
        event.listen(
            session.sync_session, "after_commit", lambda s: call_soon_in_loop(record, "x")
        )
        await session.execute(sa.text("select 1"))
        await session.commit()
        await done.wait()
    assert calls == [("x", threading.get_ident())]


async def test_helpers_on_the_loop_thread_are_create_task_and_call_soon() -> None:
    async def value() -> int:
        return 7

    task = create_task_in_loop(value())
    assert isinstance(task, asyncio.Task)
    assert await task == 7
    done = asyncio.Event()
    handle = call_soon_in_loop(done.set)
    assert isinstance(handle, asyncio.Handle)
    await done.wait()


def test_helpers_without_any_loop_say_where_to_call_them() -> None:
    async def value() -> int:
        return 7

    errors: list[BaseException] = []

    def in_a_plain_thread() -> None:
        for call in (lambda: create_task_in_loop(value()), lambda: call_soon_in_loop(print)):
            try:
                call()
            except RuntimeError as error:
                errors.append(error)

    thread = threading.Thread(target=in_a_plain_thread)
    thread.start()
    thread.join()
    assert len(errors) == 2
    assert "create_task_in_loop() found no event loop" in str(errors[0])
    assert "call_soon_in_loop() found no event loop" in str(errors[1])


async def test_asyncio_create_task_in_a_listener_fails_with_no_running_event_loop(
    maker: async_orm.async_sessionmaker[async_orm.AsyncSession],
) -> None:
    """What code written for sqlalchemy.ext.asyncio hits today (the migration is
    create_task_in_loop)."""
    async with maker() as session:

        @event.listens_for(session.sync_session, "after_commit")
        def after_commit(sync: Session) -> None:
            asyncio.get_running_loop()

        await session.execute(sa.text("select 1"))
        with pytest.raises(RuntimeError, match="no running event loop"):
            await session.commit()
