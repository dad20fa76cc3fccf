"""Fixtures of the integration tests (ASGI, Django, legacy code, examples).

Django is configured here, at import, with ``settings.configure()`` from
``django_project/settings.py``: pytest-django's fixtures then see configured
settings, and nothing is put in the environment (``DJANGO_SETTINGS_MODULE``),
so other tests and the subprocesses of the example tests are unaffected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import django
import pytest
from django.conf import settings

import async_orm
from async_orm import _worker
from tests.conftest import PG_URL, pg_url_kwargs, private_pg_schema

if not settings.configured:
    from tests.integrations.django_project import settings as _project_settings

    settings.configure(
        **{
            name: getattr(_project_settings, name)
            for name in dir(_project_settings)
            if name.isupper()
        }
    )
    django.setup()


def assert_nothing_leaked(engine: async_orm.AsyncEngine) -> None:
    """No connection checked out of ``engine``'s pool, no worker thread busy."""
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    assert checked_out == 0, f"{checked_out} connection(s) still checked out"
    busy = _worker.pool.stats()["busy"]
    assert busy == 0, f"{busy} worker thread(s) still busy"


@pytest.fixture
def second_db_url(backend: str, tmp_path: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """A second database on ``backend`` (another SQLite file, or another
    PostgreSQL schema), for tests of multiple binds and shards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'second.db'}", {}
        return
    with private_pg_schema("t2") as schema:
        yield PG_URL, pg_url_kwargs(schema)


@pytest.fixture
async def django_engine(
    db_url: tuple[str, dict[str, Any]], settings: Any
) -> AsyncIterator[async_orm.AsyncEngine]:
    """Points the Django project's ``ASYNC_ORM_DATABASES`` at this test's
    database, creates the tables, and yields ``async_orm.django.get_engine()``;
    at the end nothing may be checked out, and the engines are disposed."""
    from async_orm import django as async_orm_django
    from tests.models import Base

    url, kwargs = db_url
    settings.ASYNC_ORM_DATABASES = {
        "default": {"URL": url, "ENGINE_OPTIONS": {"pool_size": 5, "max_overflow": 5, **kwargs}}
    }
    engine = async_orm_django.get_engine()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    await async_orm_django.dispose_engines()
    assert checked_out == 0, f"{checked_out} connection(s) still checked out at teardown"
