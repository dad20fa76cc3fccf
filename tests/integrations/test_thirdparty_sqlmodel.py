"""SQLModel's async tutorial code, unchanged, through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

from tests.integrations.thirdparty import database_url, require, run_app


def test_sqlmodel_async_tutorial_runs_unchanged(backend: str, tmp_path: Path) -> None:
    require("sqlmodel")
    with database_url(backend, tmp_path) as url:
        run_app("app_sqlmodel.py", url)
