"""fastapi-users' SQLAlchemy user database, unchanged, through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

from tests.integrations.thirdparty import database_url, require, run_app


def test_fastapi_users_register_login_and_user_database(backend: str, tmp_path: Path) -> None:
    require("fastapi-users-db-sqlalchemy", "fastapi-users", "httpx")
    with database_url(backend, tmp_path) as url:
        run_app("app_fastapi_users.py", url)
