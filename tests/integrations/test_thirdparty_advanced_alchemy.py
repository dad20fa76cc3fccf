"""An advanced-alchemy repository with the session listeners its
SQLAlchemyAsyncConfig registers, through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

from tests.integrations.thirdparty import database_url, require, run_app


def test_advanced_alchemy_repository_with_migrated_asyncio_listener(
    backend: str, tmp_path: Path
) -> None:
    require("advanced-alchemy", "dogpile.cache")
    with database_url(backend, tmp_path) as url:
        run_app("app_advanced_alchemy.py", url, args=("--migrated",))


def test_advanced_alchemy_asyncio_listener_unmigrated_fails_with_no_running_loop(
    tmp_path: Path,
) -> None:
    require("advanced-alchemy", "dogpile.cache")
    with database_url("sqlite", tmp_path) as url:
        run_app("app_advanced_alchemy.py", url)
