"""The tables every contestant works on, and the data they start from.

All tables are prefixed ``bench_`` so that a shared database is never touched outside of them.
The data is prepared once per run with a plain sync engine, before any contestant starts.
"""

from __future__ import annotations

from sqlalchemy import (
    Engine,
    Integer,
    MetaData,
    String,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    """Rows read by ``pk_get``, ``select_10`` and ``select_many``, updated by ``concurrent``."""

    __tablename__ = "bench_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[int] = mapped_column(Integer)
    counter: Mapped[int] = mapped_column(Integer, default=0)


class Insert(Base):
    """Rows written by ``insert_commit`` and ``bulk_insert``."""

    __tablename__ = "bench_insert"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[int] = mapped_column(Integer)


class StreamRow(Base):
    """Rows read by ``stream``."""

    __tablename__ = "bench_stream"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[int] = mapped_column(Integer)


def backend_of(url: str | URL) -> str:
    """``"sqlite"``, ``"postgresql"``, ... for any sync or async URL."""
    return make_url(url).get_backend_name()


def sync_url(url: str | URL) -> URL:
    """The sync-driver URL for ``url``: ``postgresql+psycopg``, ``sqlite`` (pysqlite), ..."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "postgresql":
        return u.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return u.set(drivername="sqlite")
    if backend in ("mysql", "mariadb"):
        return u.set(drivername=f"{backend}+pymysql")
    return u


def _engine(url: str | URL) -> Engine:
    return create_engine(sync_url(url))


def _count(engine: Engine, table: type[Base]) -> int:
    with engine.connect() as conn:
        try:
            return int(conn.scalar(select(func.count()).select_from(table)) or 0)
        except Exception:
            conn.rollback()
            return -1


def prepare(url: str | URL, rows: int, stream_rows: int, sqlite_journal: str = "") -> None:
    """(Re)create the ``bench_`` tables with ``rows`` items and ``stream_rows`` stream rows.

    ``sqlite_journal`` (``"wal"``, ``"delete"``) sets SQLite's journal mode, which is stored in
    the database file and so holds for every contestant.

    The stream table is kept when it already holds exactly ``stream_rows`` rows, since filling
    it with a million rows is the slowest part of setting up.
    """
    engine = _engine(url)
    try:
        backend = engine.dialect.name
        if backend == "sqlite" and sqlite_journal:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"PRAGMA journal_mode={sqlite_journal}")
        keep_stream = stream_rows > 0 and _count(engine, StreamRow) == stream_rows
        tables = [Base.metadata.tables["bench_item"], Base.metadata.tables["bench_insert"]]
        if not keep_stream:
            tables.append(Base.metadata.tables["bench_stream"])
        with engine.begin() as conn:
            Base.metadata.drop_all(conn, tables=tables)
            Base.metadata.create_all(conn, tables=tables)
            batch = 5000
            for start in range(1, rows + 1, batch):
                conn.execute(
                    insert(Item),
                    [
                        {"id": i, "name": f"item-{i}", "value": i, "counter": 0}
                        for i in range(start, min(start + batch, rows + 1))
                    ],
                )
            if not keep_stream and stream_rows > 0:
                if backend == "postgresql":
                    conn.execute(
                        text(
                            "INSERT INTO bench_stream (id, name, value) "
                            "SELECT g, 'row-' || g, g FROM generate_series(1, :n) AS g"
                        ),
                        {"n": stream_rows},
                    )
                elif backend == "sqlite":
                    conn.execute(
                        text(
                            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                            "WHERE x < :n) INSERT INTO bench_stream (id, name, value) "
                            "SELECT x, 'row-' || x, x FROM c"
                        ),
                        {"n": stream_rows},
                    )
                else:
                    for start in range(1, stream_rows + 1, batch):
                        conn.execute(
                            insert(StreamRow),
                            [
                                {"id": i, "name": f"row-{i}", "value": i}
                                for i in range(start, min(start + batch, stream_rows + 1))
                            ],
                        )
        if backend == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE bench_item"))
                conn.execute(text("VACUUM ANALYZE bench_stream"))
    finally:
        engine.dispose()


def reset_inserts(url: str | URL) -> None:
    """Empty ``bench_insert`` so that every insert measurement starts from the same table."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("TRUNCATE bench_insert RESTART IDENTITY"))
            else:
                conn.execute(delete(Insert))
    finally:
        engine.dispose()


def drop_all(url: str | URL) -> None:
    """Drop every ``bench_`` table (used for throwaway databases)."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
    finally:
        engine.dispose()
