"""Async views on the request's async_orm session, and one sync view."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from async_orm.django import current_session, get_engine, run_in_session

from .models import Todo


async def health(request: HttpRequest) -> HttpResponse:
    count = await current_session().scalar(select(func.count()).select_from(Todo))
    return JsonResponse({"status": "ok", "database": get_engine().dialect.name, "todos": count})


@csrf_exempt  # a JSON API: its clients send no CSRF token
async def todos(request: HttpRequest) -> HttpResponse:
    session = current_session()
    if request.method == "POST":
        todo = Todo(title=json.loads(request.body)["title"])
        session.add(todo)
        await session.flush()  # assigns the id; the middleware commits
        return JsonResponse(todo.as_dict(), status=201)
    rows = await session.scalars(select(Todo).order_by(Todo.id))
    return JsonResponse([t.as_dict() for t in rows], safe=False)


@csrf_exempt
async def todo_detail(request: HttpRequest, todo_id: int) -> HttpResponse:
    session = current_session()
    todo = await session.get(Todo, todo_id)
    if todo is None:
        return JsonResponse({"detail": f"no to-do {todo_id}"}, status=404)
    if request.method == "PATCH":
        body = json.loads(request.body)
        if "title" in body:
            todo.title = body["title"]
        if "done" in body:
            todo.done = bool(body["done"])
        await session.flush()
    elif request.method == "DELETE":
        await session.delete(todo)
        return HttpResponse(status=204)
    return JsonResponse(todo.as_dict())


def count_by_state(session: Session) -> dict[str, int]:
    """Existing sync code that takes a Session."""
    rows = session.execute(select(Todo.done, func.count()).group_by(Todo.done)).all()
    counts = {"open": 0, "done": 0}
    for done, count in rows:
        counts["done" if done else "open"] = count
    return counts


def stats(request: HttpRequest) -> HttpResponse:
    """A sync view: Django runs it in a thread; the sync function runs on the
    request session's worker thread."""
    return JsonResponse(run_in_session(count_by_state))
