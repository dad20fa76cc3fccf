"""sqladmin's admin views over an AsyncEngine, unchanged, on a sync URL through
async_orm: the list page, a create form, the details and edit pages, and delete."""

import async_orm._standin

async_orm._standin.install_as_sqlalchemy_asyncio()  # before the libraries are imported

import asyncio  # noqa: E402
import threading  # noqa: E402

import httpx  # noqa: E402
from _common import database_url, report_greenlet  # noqa: E402
from sqladmin import Admin, ModelView  # noqa: E402
from sqlalchemy import ForeignKey, String, event, func, select  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship  # noqa: E402
from starlette.applications import Starlette  # noqa: E402


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    # lazy="select": sqladmin loads it for the details page
    addresses: Mapped[list["Address"]] = relationship(back_populates="user")


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User | None] = relationship(back_populates="addresses")

    def __str__(self) -> str:
        return self.email


class UserAdmin(ModelView, model=User):
    column_list = [User.id, User.name]
    column_details_list = [User.id, User.name, User.addresses]
    form_columns = [User.name]


engine = create_async_engine(database_url())
maker = async_sessionmaker(engine, expire_on_commit=False)
statement_threads: set[int] = set()


@event.listens_for(engine.sync_engine, "before_cursor_execute")
def _record_thread(*_args: object) -> None:
    statement_threads.add(threading.get_ident())


app = Starlette()
admin = Admin(app, engine)
admin.add_view(UserAdmin)


async def main() -> None:
    report_greenlet()
    assert admin.is_async
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with maker() as session:
        ann = User(name="ann", addresses=[Address(email="ann@example.com")])
        session.add(ann)
        await session.commit()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/admin/user/list")
        assert response.status_code == 200, response.text
        assert "ann" in response.text

        response = await client.post("/admin/user/create", data={"name": "bob"})
        assert response.status_code == 302, response.text
        async with maker() as session:
            bob = (await session.scalars(select(User).where(User.name == "bob"))).one()

        response = await client.get(f"/admin/user/details/{ann.id}")
        assert response.status_code == 200, response.text
        assert "ann@example.com" in response.text, response.text

        response = await client.post(f"/admin/user/edit/{bob.id}", data={"name": "bobby"})
        assert response.status_code == 302, response.text
        response = await client.get("/admin/user/list", params={"search": ""})
        assert "bobby" in response.text

        response = await client.delete("/admin/user/delete", params={"pks": str(bob.id)})
        assert response.status_code == 200, response.text
        async with maker() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 1

    await engine.dispose()
    assert statement_threads and threading.get_ident() not in statement_threads, (
        "a statement ran on the event loop thread"
    )
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
