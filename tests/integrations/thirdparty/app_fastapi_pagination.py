"""fastapi-pagination's async ``apaginate()`` in FastAPI routes, unchanged, on a sync
URL through async_orm: offset pages (``Page``) of ORM rows and of column rows,
and cursor pages (``CursorPage``, through sqlakeyset)."""

import async_orm._standin

async_orm._standin.install_as_sqlalchemy_asyncio()  # before the libraries are imported

import asyncio  # noqa: E402
import threading  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from typing import Annotated  # noqa: E402

import httpx  # noqa: E402
from _common import database_url, report_greenlet  # noqa: E402
from fastapi import Depends, FastAPI  # noqa: E402
from fastapi_pagination import Page, add_pagination  # noqa: E402
from fastapi_pagination.cursor import CursorPage  # noqa: E402
from fastapi_pagination.ext.sqlalchemy import apaginate  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402
from sqlalchemy import ForeignKey, String, event, select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship  # noqa: E402


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    # lazy="select": the page's items are validated (and so lazy-loaded) by
    # fastapi-pagination inside greenlet_spawn, i.e. on the session's worker
    addresses: Mapped[list["Address"]] = relationship(order_by="Address.id")


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    email: Mapped[str] = mapped_column(String(100))


class AddressOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    email: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    addresses: list[AddressOut]


class NameOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str


engine = create_async_engine(database_url())
maker = async_sessionmaker(engine, expire_on_commit=False)
statement_threads: set[int] = set()


@event.listens_for(engine.sync_engine, "before_cursor_execute")
def _record_thread(*_args: object) -> None:
    statement_threads.add(threading.get_ident())


async def get_session() -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
app = FastAPI()


@app.get("/users")
async def users(session: SessionDep) -> Page[UserOut]:
    return await apaginate(session, select(User).order_by(User.id))


@app.get("/names")
async def names(session: SessionDep) -> Page[NameOut]:
    return await apaginate(session, select(User.id, User.name).order_by(User.id))


@app.get("/users-by-cursor")
async def users_by_cursor(session: SessionDep) -> CursorPage[NameOut]:
    return await apaginate(session, select(User).order_by(User.id))


add_pagination(app)


async def main() -> None:
    report_greenlet()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with maker() as session:
        for i in range(1, 26):
            user = User(id=i, name=f"user{i:02}")
            user.addresses = [Address(email=f"u{i}-{n}@example.com") for n in (1, 2)]
            session.add(user)
        await session.commit()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/users", params={"page": 2, "size": 10})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == 25 and page["page"] == 2 and page["pages"] == 3, page
        assert [u["id"] for u in page["items"]] == list(range(11, 21)), page
        assert page["items"][0]["addresses"] == [
            {"email": "u11-1@example.com"},
            {"email": "u11-2@example.com"},
        ], page

        response = await client.get("/names", params={"page": 3, "size": 10})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == 25, page
        assert page["items"] == [{"id": i, "name": f"user{i:02}"} for i in range(21, 26)]

        seen: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"size": 10}
            if cursor is not None:
                params["cursor"] = cursor
            response = await client.get("/users-by-cursor", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            seen.extend(u["id"] for u in page["items"])
            cursor = page["next_page"]
            if cursor is None:
                break
        assert seen == list(range(1, 26)), seen

    await engine.dispose()
    assert statement_threads and threading.get_ident() not in statement_threads, (
        "a statement ran on the event loop thread"
    )
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
