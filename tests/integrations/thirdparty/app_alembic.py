"""Alembic's async migration template (``alembic init -t async``), its ``env.py``
unchanged, upgrading and downgrading a real schema on a sync URL through
async_orm.  The stand-in is installed by the command that runs Alembic (this
script, in place of the ``alembic`` console script), so ``env.py``'s own
``from sqlalchemy.ext.asyncio import async_engine_from_config`` gets async_orm's."""

import async_orm._standin

async_orm._standin.install_as_sqlalchemy_asyncio()  # before Alembic loads env.py

import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from _common import database_url, report_greenlet  # noqa: E402
from alembic.config import main as alembic  # noqa: E402

REVISION_1 = '''"""create account

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    op.bulk_insert(
        sa.table("account", sa.column("id", sa.Integer), sa.column("name", sa.String)),
        [{"id": 1, "name": "alice"}, {"id": 2, "name": "bob"}],
    )


def downgrade() -> None:
    op.drop_table("account")
'''

REVISION_2 = '''"""add account.email, index

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account") as batch:
        batch.add_column(sa.Column("email", sa.String(100), nullable=True))
        batch.create_index("ix_account_email", ["email"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("account") as batch:
        batch.drop_index("ix_account_email")
        batch.drop_column("email")
'''


def columns(url: str) -> dict[str, list[str]]:
    """The tables and their columns, read with a plain sync engine."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        inspector = sa.inspect(engine)
        return {
            t: [c["name"] for c in inspector.get_columns(t)] for t in inspector.get_table_names()
        }
    finally:
        engine.dispose()


def main() -> None:
    report_greenlet()
    url = database_url()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        ini = project / "alembic.ini"
        alembic(["-c", str(ini), "init", "-t", "async", str(project / "migrations")])
        env_py = (project / "migrations" / "env.py").read_text()
        assert "from sqlalchemy.ext.asyncio import async_engine_from_config" in env_py
        # point the generated alembic.ini at the test database (as a user edits it)
        text = ini.read_text().replace(
            "sqlalchemy.url = driver://user:pass@localhost/dbname",
            "sqlalchemy.url = " + url.replace("%", "%%"),
        )
        ini.write_text(text)
        versions = project / "migrations" / "versions"
        (versions / "0001_create_account.py").write_text(REVISION_1)
        (versions / "0002_add_email.py").write_text(REVISION_2)

        alembic(["-c", str(ini), "upgrade", "0001"])
        assert columns(url) == {"account": ["id", "name"], "alembic_version": ["version_num"]}
        alembic(["-c", str(ini), "upgrade", "head"])
        assert columns(url)["account"] == ["id", "name", "email"], columns(url)
        alembic(["-c", str(ini), "current"])
        alembic(["-c", str(ini), "downgrade", "-1"])
        assert columns(url)["account"] == ["id", "name"], columns(url)
        alembic(["-c", str(ini), "downgrade", "base"])
        assert columns(url) == {"alembic_version": ["version_num"]}, columns(url)
        # the env.py alembic generated is the one that ran, unchanged
        assert (project / "migrations" / "env.py").read_text() == env_py
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
