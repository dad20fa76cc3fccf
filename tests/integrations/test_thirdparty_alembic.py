"""Alembic's async migration template (alembic init -t async), env.py unchanged,
upgrading and downgrading a real schema through async_orm's stand-in."""

from __future__ import annotations

from pathlib import Path

from tests.integrations.thirdparty import database_url, require, run_app


def test_alembic_async_template_upgrades_and_downgrades(backend: str, tmp_path: Path) -> None:
    require("alembic")
    with database_url(backend, tmp_path) as url:
        run_app("app_alembic.py", url)
