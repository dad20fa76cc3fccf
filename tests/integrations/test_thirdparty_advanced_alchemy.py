"""An advanced-alchemy repository with the session listeners its
SQLAlchemyAsyncConfig registers, through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

import async_orm
from tests.integrations.thirdparty import database_url, require, run_app


def _require_sessionmaker_as_sync_session_class() -> None:
    """advanced-alchemy passes a sessionmaker (to carry its listeners) as
    ``sync_session_class``, which SQLAlchemy's AsyncSession accepts."""
    try:
        async_orm.AsyncSession(sync_session_class=sessionmaker())  # type: ignore[arg-type]
    except AttributeError as error:
        pytest.xfail(
            "async_orm.AsyncSession does not accept a sessionmaker as sync_session_class "
            f"yet ({error}); advanced-alchemy's SQLAlchemyAsyncConfig passes one"
        )


def test_advanced_alchemy_repository_with_migrated_asyncio_listener(
    backend: str, tmp_path: Path
) -> None:
    require("advanced-alchemy", "dogpile.cache")
    _require_sessionmaker_as_sync_session_class()
    with database_url(backend, tmp_path) as url:
        run_app("app_advanced_alchemy.py", url, args=("--migrated",))


def test_advanced_alchemy_asyncio_listener_unmigrated_fails_with_no_running_loop(
    tmp_path: Path,
) -> None:
    require("advanced-alchemy", "dogpile.cache")
    _require_sessionmaker_as_sync_session_class()
    with database_url("sqlite", tmp_path) as url:
        run_app("app_advanced_alchemy.py", url)
