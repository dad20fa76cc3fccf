"""A to-do list API on FastAPI and async_orm.

Each request gets its own AsyncSession from ``AsyncSessionMiddleware``: the
handlers receive it through ``Depends(current_session)``, and the middleware
commits it when the response succeeds, rolls it back otherwise, and closes it.

Run it (SQLite file ``todos.db`` in the current directory by default)::

    python examples/fastapi_app/app.py
    python examples/fastapi_app/app.py --database-url postgresql+psycopg://postgres@127.0.0.1/test
    DATABASE_URL=sqlite:///other.db python examples/fastapi_app/app.py --port 8001

or with uvicorn directly::

    uvicorn --factory app:create_app --app-dir examples/fastapi_app

Then::

    curl -X POST localhost:8000/todos -H 'content-type: application/json' \\
         -d '{"title": "write docs"}'
    curl localhost:8000/todos
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_orm import AsyncSession, async_scoped_session, async_sessionmaker, create_async_engine
from async_orm.asgi import AsyncSessionMiddleware, current_session
from async_orm.scopes import context_scope

DEFAULT_DATABASE_URL = "sqlite:///todos.db"


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False)


class TodoIn(BaseModel):
    title: str


class TodoPatch(BaseModel):
    title: str | None = None
    done: bool | None = None


class TodoOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    done: bool


# The request's session, as a FastAPI dependency.
DbSession = Annotated[AsyncSession, Depends(current_session)]


async def get_todo(todo_id: int, session: DbSession) -> Todo:
    todo = await session.get(Todo, todo_id)
    if todo is None:
        raise HTTPException(status_code=404, detail=f"no to-do {todo_id}")
    return todo


TodoById = Annotated[Todo, Depends(get_todo)]


def create_app(database_url: str | None = None) -> FastAPI:
    """The application, on ``database_url`` (default: ``$DATABASE_URL``, else
    ``sqlite:///todos.db``)."""
    url = database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    engine = create_async_engine(url)
    Session = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False), scopefunc=context_scope
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        # AsyncSessionMiddleware disposes of the engine once shutdown is complete.

    app = FastAPI(title="async_orm to-do example", lifespan=lifespan)
    app.add_middleware(AsyncSessionMiddleware, sessions=Session)

    @app.get("/health")
    async def health(session: DbSession) -> dict[str, Any]:
        count = await session.scalar(select(func.count()).select_from(Todo))
        return {"status": "ok", "database": engine.dialect.name, "todos": count}

    @app.post("/todos", status_code=201)
    async def create_todo(body: TodoIn, session: DbSession) -> TodoOut:
        todo = Todo(title=body.title)
        session.add(todo)
        await session.flush()  # assigns the id; the middleware commits
        return TodoOut.model_validate(todo)

    @app.get("/todos")
    async def list_todos(session: DbSession) -> list[TodoOut]:
        todos = await session.scalars(select(Todo).order_by(Todo.id))
        return [TodoOut.model_validate(t) for t in todos]

    @app.get("/todos/{todo_id}")
    async def read_todo(todo: TodoById) -> TodoOut:
        return TodoOut.model_validate(todo)

    @app.patch("/todos/{todo_id}")
    async def update_todo(body: TodoPatch, todo: TodoById, session: DbSession) -> TodoOut:
        if body.title is not None:
            todo.title = body.title
        if body.done is not None:
            todo.done = body.done
        await session.flush()
        return TodoOut.model_validate(todo)

    @app.delete("/todos/{todo_id}", status_code=204)
    async def delete_todo(todo: TodoById, session: DbSession) -> Response:
        await session.delete(todo)
        return Response(status_code=204)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"sync SQLAlchemy URL (default: $DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    uvicorn.run(create_app(args.database_url), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
