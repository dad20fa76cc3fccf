"""Who competes: the contestants and what each one needs installed.

Every contestant belongs to one *family*, which decides how the shared workloads call it:

``sync``
    A plain sync :class:`~sqlalchemy.orm.Session`, called directly (a thread per client in
    the ``concurrent`` workload). This is the limit the others are measured against.
``async_api``
    The ``sqlalchemy.ext.asyncio`` API: async_orm itself, and SQLAlchemy's own asyncio
    extension over an async driver (aiosqlite, psycopg async, asyncpg). async_orm mirrors that
    API name for name, so the very same workload code runs both.
``offload``
    A sync Session whose every awaited call goes through ``asyncio.to_thread`` or
    ``asgiref.sync.sync_to_async``, exactly where the async API code has an ``await``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Literal

Family = Literal["sync", "async_api", "offload"]

#: How to install every optional package of the suite (peers' drivers, greenlet, matplotlib).
INSTALL = "pip install -e ./benchmarks (in an async_orm checkout)"


@dataclass(frozen=True)
class Contestant:
    name: str
    label: str
    family: Family
    backends: frozenset[str]
    """Backends it runs on; empty means every backend."""
    modules: tuple[str, ...]
    """Modules it imports; it is skipped, with :attr:`install`, when one is missing."""
    install: str
    driver: str = ""
    """SQLAlchemy driver name for async_api peers (``sqlite+aiosqlite`` ...)."""
    configure: tuple[tuple[str, object], ...] = ()
    """async_orm only: keyword arguments of ``async_orm.configure``, applied in the
    measurement process before the engine is made (thread placement, issue 19)."""
    default: bool = True
    """In a run without ``--contestants``; the placement variants run only when named."""

    @property
    def is_async_orm(self) -> bool:
        """async_orm itself, with or without ``configure`` settings."""
        return self.name == "async_orm" or self.name.startswith("async_orm_")

    def runs_on(self, backend: str) -> bool:
        return not self.backends or backend in self.backends


CONTESTANTS: tuple[Contestant, ...] = (
    Contestant("sync", "sync Session (direct)", "sync", frozenset(), (), "pip install sqlalchemy"),
    Contestant(
        "async_orm", "async_orm", "async_api", frozenset(), ("async_orm",), "pip install async_orm"
    ),
    Contestant(
        "async_orm_colocated",
        "async_orm (colocated)",
        "async_api",
        frozenset(),
        ("async_orm",),
        "pip install async_orm",
        configure=(("colocate_threads", True),),
        default=False,
    ),
    Contestant(
        "async_orm_colocated_pinned",
        "async_orm (colocated + loop pinned)",
        "async_api",
        frozenset(),
        ("async_orm",),
        "pip install async_orm",
        configure=(("colocate_threads", True), ("pin_event_loop", True)),
        default=False,
    ),
    Contestant(
        "async_orm_baseline",
        "async_orm (--baseline tree)",
        "async_api",
        frozenset(),
        ("async_orm",),
        "--baseline TREE (a checkout of the revision to compare with)",
        default=False,
    ),
    Contestant(
        "sa_aiosqlite",
        "SA asyncio + aiosqlite",
        "async_api",
        frozenset({"sqlite"}),
        ("greenlet", "aiosqlite"),
        INSTALL,
        "sqlite+aiosqlite",
    ),
    Contestant(
        "sa_psycopg",
        "SA asyncio + psycopg async",
        "async_api",
        frozenset({"postgresql"}),
        ("greenlet", "psycopg"),
        INSTALL,
        "postgresql+psycopg_async",
    ),
    Contestant(
        "sa_asyncpg",
        "SA asyncio + asyncpg",
        "async_api",
        frozenset({"postgresql"}),
        ("greenlet", "asyncpg"),
        INSTALL,
        "postgresql+asyncpg",
    ),
    Contestant(
        "to_thread",
        "Session via asyncio.to_thread",
        "offload",
        frozenset(),
        (),
        "",
    ),
    Contestant(
        "sync_to_async",
        "Session via asgiref sync_to_async",
        "offload",
        frozenset(),
        ("asgiref",),
        "pip install asgiref",
    ),
)

BY_NAME = {c.name: c for c in CONTESTANTS}

#: Driver each backend's sync contestants (sync, async_orm, offload) need.
SYNC_DRIVERS = {
    "postgresql": ("psycopg", "pip install 'async_orm[postgresql]'"),
    "mysql": ("pymysql", "pip install 'async_orm[mysql]'"),
    "mariadb": ("pymysql", "pip install 'async_orm[mysql]'"),
}


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def unavailable_reason(contestant: Contestant, backend: str, baseline: str = "") -> str | None:
    """Why ``contestant`` cannot run on ``backend`` here, or ``None`` when it can;
    ``baseline`` is the ``--baseline`` tree, if any."""
    if not contestant.runs_on(backend):
        return f"does not run on {backend}"
    missing = missing_modules(contestant.modules)
    if missing:
        return f"needs {', '.join(missing)}: {contestant.install}"
    if contestant.name == "async_orm_baseline" and not baseline:
        return "needs --baseline TREE (a checkout of the revision to compare with)"
    if contestant.is_async_orm:
        try:
            mod = importlib.import_module("async_orm")
        except Exception as exc:  # the package itself is broken: say so, keep benching peers
            return f"async_orm does not import: {exc!r}"
        if not hasattr(mod, "create_async_engine"):
            return "async_orm has no create_async_engine (core not installed)"
        if contestant.configure and not hasattr(mod, "configure"):
            return "this async_orm has no configure() (thread placement, issue 19)"
    return None
