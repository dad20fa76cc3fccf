"""fastapi-users' user database (fastapi-users-db-sqlalchemy's
``SQLAlchemyUserDatabase``), unchanged, on a sync URL through async_orm: users
registered and read through a FastAPI app, then created, found, updated and
deleted through the user database directly, as its documentation shows."""

import async_orm._standin

async_orm._standin.install_as_sqlalchemy_asyncio()  # before the libraries are imported

import asyncio  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from typing import Annotated  # noqa: E402

import httpx  # noqa: E402
from _common import database_url, report_greenlet  # noqa: E402
from fastapi import Depends, FastAPI  # noqa: E402
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas  # noqa: E402
from fastapi_users.authentication import (  # noqa: E402
    AuthenticationBackend,
    BearerTransport,
    JWTStrategy,
)
from fastapi_users_db_sqlalchemy import (  # noqa: E402
    SQLAlchemyBaseOAuthAccountTableUUID,
    SQLAlchemyBaseUserTableUUID,
    SQLAlchemyUserDatabase,
)
from sqlalchemy import event  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, relationship  # noqa: E402

SECRET = "not-a-secret-test-only-0123456789abcdef"


class Base(DeclarativeBase):
    pass


class OAuthAccount(SQLAlchemyBaseOAuthAccountTableUUID, Base):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    oauth_accounts: Mapped[list[OAuthAccount]] = relationship(
        lazy="joined", cascade="all, delete-orphan"
    )


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


engine = create_async_engine(database_url())
maker = async_sessionmaker(engine, expire_on_commit=False)
statement_threads: set[int] = set()


@event.listens_for(engine.sync_engine, "before_cursor_execute")
def _record_thread(*_args: object) -> None:
    statement_threads.add(threading.get_ident())


async def get_async_session() -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session


async def get_user_db(
    session: Annotated[AsyncSession, Depends(get_async_session)],
) -> AsyncIterator[SQLAlchemyUserDatabase[User, uuid.UUID]]:
    yield SQLAlchemyUserDatabase(session, User, OAuthAccount)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


async def get_user_manager(
    user_db: Annotated[SQLAlchemyUserDatabase[User, uuid.UUID], Depends(get_user_db)],
) -> AsyncIterator[UserManager]:
    yield UserManager(user_db)


def get_jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
    return JWTStrategy(secret=SECRET, lifetime_seconds=3600)


auth_backend = AuthenticationBackend(
    name="jwt", transport=BearerTransport(tokenUrl="auth/jwt/login"), get_strategy=get_jwt_strategy
)
fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])
app = FastAPI()
app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth")
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt")
app.include_router(
    fastapi_users.get_users_router(UserRead, schemas.BaseUserUpdate), prefix="/users"
)


async def through_the_app() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/auth/register", json={"email": "king.arthur@camelot.bt", "password": "guinevere"}
        )
        assert response.status_code == 201, response.text
        response = await client.post(
            "/auth/jwt/login",
            data={"username": "king.arthur@camelot.bt", "password": "guinevere"},
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        response = await client.patch("/users/me", json={"password": "excalibur"}, headers=headers)
        assert response.status_code == 200, response.text
        response = await client.get("/users/me", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["email"] == "king.arthur@camelot.bt"


async def through_the_user_database() -> None:
    async with maker() as session:
        user_db = SQLAlchemyUserDatabase(session, User, OAuthAccount)
        user = await user_db.create(
            {"email": "lancelot@camelot.bt", "hashed_password": "x", "is_verified": False}
        )
        assert isinstance(user.id, uuid.UUID)
        found = await user_db.get(user.id)
        assert found is not None and found.email == "lancelot@camelot.bt"
        assert (await user_db.get_by_email("LANCELOT@camelot.bt")) is not None
        updated = await user_db.update(user, {"is_verified": True})
        assert updated.is_verified
        user = await user_db.add_oauth_account(
            user,
            {
                "oauth_name": "service",
                "access_token": "tok",
                "account_id": "42",
                "account_email": "lancelot@camelot.bt",
            },
        )
        by_oauth = await user_db.get_by_oauth_account("service", "42")
        assert by_oauth is not None and by_oauth.id == user.id
        await user_db.delete(user)
        assert await user_db.get(user.id) is None


async def main() -> None:
    report_greenlet()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await through_the_app()
    await through_the_user_database()
    await engine.dispose()
    assert statement_threads and threading.get_ident() not in statement_threads, (
        "a statement ran on the event loop thread"
    )
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
