"""The requirements class the conformance run gives SQLAlchemy's test plugin.

SQLAlchemy gates its asyncio tests on ``async_dialect`` (an ``await_()``-driven
DBAPI such as psycopg_async or aiosqlite) and ``asyncio`` (greenlet installed).
async_orm gives every sync dialect the asyncio API without greenlet, so both
are open here; every other requirement is SQLAlchemy's own
(``test/requirements.py`` of the downloaded sdist).
"""

from __future__ import annotations

from sqlalchemy.testing import exclusions
from test.requirements import DefaultRequirements  # type: ignore[import-not-found]


class AsyncOrmRequirements(DefaultRequirements):  # type: ignore[misc]
    @property
    def async_dialect(self) -> exclusions.compound:
        """async_orm runs the asyncio API over the sync dialect under test."""
        return exclusions.open()

    @property
    def asyncio(self) -> exclusions.compound:
        """async_orm needs no greenlet for the asyncio API."""
        return exclusions.open()
