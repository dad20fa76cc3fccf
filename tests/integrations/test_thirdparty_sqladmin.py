"""sqladmin's admin views over an AsyncEngine, unchanged, through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

from tests.integrations.thirdparty import database_url, require, run_app


def test_sqladmin_list_create_details_edit_delete(backend: str, tmp_path: Path) -> None:
    require("sqladmin", "httpx")
    with database_url(backend, tmp_path) as url:
        run_app("app_sqladmin.py", url)
