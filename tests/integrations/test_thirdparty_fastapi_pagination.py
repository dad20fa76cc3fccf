"""fastapi-pagination's async apaginate() (offset and sqlakeyset cursor pages) in
FastAPI routes, unchanged, through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

from tests.integrations.thirdparty import database_url, require, run_app


def test_fastapi_pagination_offset_and_cursor_pages(backend: str, tmp_path: Path) -> None:
    require("fastapi-pagination", "sqlakeyset", "fastapi", "httpx")
    with database_url(backend, tmp_path) as url:
        run_app("app_fastapi_pagination.py", url)
