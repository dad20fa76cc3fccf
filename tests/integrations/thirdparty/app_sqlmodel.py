"""SQLModel's async tutorial code (``sqlmodel.ext.asyncio.session.AsyncSession`` and
``session.exec()``), unchanged, on a sync URL through async_orm."""

import async_orm._standin

async_orm._standin.install_as_sqlalchemy_asyncio()  # before SQLModel is imported

import asyncio  # noqa: E402
import threading  # noqa: E402

from _common import database_url, report_greenlet  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402
from sqlalchemy.orm import selectinload  # noqa: E402
from sqlmodel import Field, Relationship, SQLModel, col, select  # noqa: E402
from sqlmodel.ext.asyncio.session import AsyncSession  # noqa: E402


class Team(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    headquarters: str
    heroes: list["Hero"] = Relationship(back_populates="team")


class Hero(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    secret_name: str
    age: int | None = Field(default=None, index=True)
    team_id: int | None = Field(default=None, foreign_key="team.id")
    team: Team | None = Relationship(back_populates="heroes")


engine = create_async_engine(database_url())
statement_threads: set[int] = set()


@event.listens_for(engine.sync_engine, "before_cursor_execute")
def _record_thread(*_args: object) -> None:
    statement_threads.add(threading.get_ident())


async def create_db_and_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)


async def create_heroes() -> None:
    async with AsyncSession(engine) as session:
        team = Team(name="Preventers", headquarters="Sharp Tower")
        session.add(team)
        session.add(Hero(name="Deadpond", secret_name="Dive Wilson", team=team))
        session.add(Hero(name="Spider-Boy", secret_name="Pedro Parqueador"))
        session.add(Hero(name="Rusty-Man", secret_name="Tommy Sharp", age=48, team=team))
        await session.commit()


async def select_heroes() -> None:
    async with AsyncSession(engine) as session:
        heroes = (await session.exec(select(Hero).order_by(col(Hero.id)))).all()
        assert [h.name for h in heroes] == ["Deadpond", "Spider-Boy", "Rusty-Man"], heroes

        hero = (await session.exec(select(Hero).where(Hero.name == "Rusty-Man"))).one()
        assert hero.age == 48

        older = (await session.exec(select(Hero).where(col(Hero.age) >= 40))).first()
        assert older is not None and older.name == "Rusty-Man"

        assert await session.get(Hero, 9999) is None

        # rows, not entities: a tuple result
        pairs = (await session.exec(select(Hero.name, Team.name).join(Team))).all()
        assert sorted(pairs) == [("Deadpond", "Preventers"), ("Rusty-Man", "Preventers")]

        # a relationship, loaded in the query (no lazy load on the event loop)
        team = (await session.exec(select(Team).options(selectinload(Team.heroes)))).one()
        assert sorted(h.name for h in team.heroes) == ["Deadpond", "Rusty-Man"]


async def update_and_delete() -> None:
    async with AsyncSession(engine) as session:
        hero = (await session.exec(select(Hero).where(Hero.name == "Spider-Boy"))).one()
        hero.age = 16
        session.add(hero)
        await session.commit()
        await session.refresh(hero)
        assert hero.age == 16

        await session.delete(hero)
        await session.commit()
        remaining = (await session.exec(select(Hero))).all()
        assert len(remaining) == 2


async def main() -> None:
    report_greenlet()
    await create_db_and_tables()
    await create_heroes()
    await select_heroes()
    await update_and_delete()
    await engine.dispose()
    assert statement_threads and threading.get_ident() not in statement_threads, (
        "a statement ran on the event loop thread"
    )
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
