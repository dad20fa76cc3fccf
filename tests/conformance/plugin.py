"""pytest plugin of the conformance run (``-p tests.conformance.plugin``).

It runs next to SQLAlchemy's own test plugin and changes, at run time, what
points SQLAlchemy's testing helpers at ``sqlalchemy.ext.asyncio`` or at greenlet:

* ``testing_engine(asyncio=True)`` (and the ``async_testing_engine`` fixture,
  which calls it) builds its engine with ``async_orm.create_async_engine``;
* ``@async_test`` runs the test coroutine on a real asyncio loop
  (``asyncio.run``, a new loop per test), not through greenlet;
* a sync test function runs inside a running event loop too, under
  ``async_orm.allow_loop_io()``: upstream runs every test of an async dialect
  in a greenlet on its loop (some rely on it: ``current_task()`` scopes);
* the testing reaper's ``await_(engine.dispose())`` runs the coroutine on a loop
  of its own;
* fixtures, setup and teardown run under ``async_orm.allow_loop_io()`` (upstream
  runs them in a greenlet, where sync I/O is allowed), so the loop guard judges
  only the code under test;
* every test's outcome is written as JSON to ``$ASYNC_ORM_CONFORMANCE_RESULTS``.

The requirements that gate on an async dialect are in ``requirements.py``; the
imports of the copied test files are rewritten by the runner (``__main__.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

import pytest

_outcomes: dict[str, dict[str, str]] = {}
_ASYNC_PACKAGE = "sqlalchemy.ext.asyncio"


@contextlib.contextmanager
def _async_orm_as_sqlalchemy_asyncio() -> Iterator[None]:
    """For the length of one ``testing_engine(asyncio=True)`` call, its
    ``from sqlalchemy.ext.asyncio import create_async_engine`` finds async_orm."""
    import async_orm

    missing = object()
    saved = sys.modules.get(_ASYNC_PACKAGE, missing)
    sys.modules[_ASYNC_PACKAGE] = async_orm
    try:
        yield
    finally:
        if saved is missing:
            del sys.modules[_ASYNC_PACKAGE]
        else:
            sys.modules[_ASYNC_PACKAGE] = saved  # type: ignore[assignment]


def _run_coroutine_function(
    fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kwargs: Any
) -> Any:
    """``@async_test``: the test coroutine on a real asyncio loop, one per test."""
    return asyncio.run(fn(*args, **kwargs))


def _is_coroutine_test(fn: Any) -> bool:
    """Whether the (decorated) test function is an ``async def`` under ``@async_test``."""
    seen = 0
    while fn is not None and seen < 50:
        if inspect.iscoroutinefunction(fn):
            return True
        fn = getattr(fn, "__wrapped__", None)
        seen += 1
    return False


def _patch_sqlalchemy_testing() -> None:
    from sqlalchemy.testing import asyncio as sa_testing_asyncio
    from sqlalchemy.testing import engines

    from tests.conformance import shim

    original_testing_engine = engines.testing_engine

    def testing_engine(
        url: Any = None, options: Any = None, *, asyncio: bool = False, **kw: Any
    ) -> Any:
        if not asyncio:
            return original_testing_engine(url, options, **kw)
        with _async_orm_as_sqlalchemy_asyncio():
            return original_testing_engine(url, options, asyncio=True, **kw)

    engines.testing_engine = testing_engine
    # ConnectionKiller disposes async engines with await_(engine.dispose())
    for name in ("await_", "await_only"):
        if hasattr(engines, name):
            setattr(engines, name, shim.await_)
    sa_testing_asyncio._run_coroutine_function = _run_coroutine_function


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("greenlet") is not None:
        raise pytest.UsageError(
            "greenlet is importable in this environment; the conformance run proves "
            "async_orm works without it. Uninstall it (pip uninstall -y greenlet)."
        )
    _patch_sqlalchemy_testing()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    from async_orm import allow_loop_io

    with allow_loop_io():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    from async_orm import allow_loop_io

    with allow_loop_io():
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A sync test function runs as upstream runs it for an async dialect: on a
    running event loop, where (upstream: in a greenlet) sync I/O is allowed."""
    test = pyfuncitem.obj
    if _is_coroutine_test(test):
        return None  # @async_test runs it with asyncio.run()
    from async_orm import allow_loop_io

    funcargs = pyfuncitem.funcargs
    kwargs = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run_on_loop() -> None:
        with allow_loop_io():
            test(**kwargs)

    asyncio.run(run_on_loop())
    return True


def _reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if not message:
        lines = [line for line in str(report.longrepr).splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    return " ".join(str(message).split())[:300]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    if report.failed:
        if entry["outcome"] != "failed":
            where = "" if report.when == "call" else f"[{report.when}] "
            entry.update(outcome="failed", reason=where + _reason(report))
    elif report.skipped and entry["outcome"] == "passed":
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        entry.update(outcome="skipped", reason=reason)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("ASYNC_ORM_CONFORMANCE_RESULTS")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_outcomes, f, indent=1, sort_keys=True)
