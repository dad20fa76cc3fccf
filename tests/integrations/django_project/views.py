"""Views of the test project: async CRUD on the request session, failing views,
and sync views sharing the engine or the request session."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from async_orm.django import current_session, get_engine, run_in_session
from tests.integrations.rendezvous import Rendezvous
from tests.models import Address, User

#: set by a test to make concurrent requests wait for each other
barrier: Rendezvous | None = None
#: set by a test to learn that a request is waiting for the client to go away
entered: asyncio.Event | None = None


def _json(request: HttpRequest) -> Any:
    return json.loads(request.body or b"{}")


async def users(request: HttpRequest) -> HttpResponse:
    session = current_session()
    if request.method == "POST":
        user = User(name=_json(request)["name"])
        session.add(user)
        await session.flush()
        return JsonResponse({"id": user.id, "name": user.name}, status=201)
    rows = (await session.scalars(select(User).order_by(User.id))).all()
    return JsonResponse({"users": [{"id": u.id, "name": u.name} for u in rows]})


async def user_detail(request: HttpRequest, pk: int) -> HttpResponse:
    session = current_session()
    user = await session.get(User, pk)
    if user is None:
        return JsonResponse({"error": "not found"}, status=404)
    if request.method == "PUT":
        user.name = _json(request)["name"]
        await session.flush()
    elif request.method == "DELETE":
        await session.delete(user)
        await session.flush()
        return HttpResponse(status=204)
    return JsonResponse({"id": user.id, "name": user.name})


async def fail_after_write(request: HttpRequest) -> HttpResponse:
    session = current_session()
    session.add(User(name="doomed"))
    await session.flush()
    raise RuntimeError("the view failed after writing")


async def conflict_after_write(request: HttpRequest) -> HttpResponse:
    session = current_session()
    session.add(User(name="conflicted"))
    await session.flush()
    return JsonResponse({"error": "conflict"}, status=409)


async def duplicate(request: HttpRequest) -> HttpResponse:
    current_session().add(
        User(name="dup", addresses=[Address(email="same@x.org"), Address(email="same@x.org")])
    )
    return JsonResponse({"created": True}, status=201)  # the commit will fail


async def session_info(request: HttpRequest) -> HttpResponse:
    session = current_session()
    thread = await session.run_sync(lambda s: threading.get_ident())
    if barrier is not None:
        await barrier.wait()  # every request holds its session (and thread) here
    return JsonResponse(
        {
            "session": id(session),
            "same_session_again": current_session() is session,
            "thread": thread,
            "loop_thread": threading.get_ident(),
        }
    )


def sync_create_user(request: HttpRequest) -> HttpResponse:
    """A sync view on the same engine, through plain sync SQLAlchemy."""
    engine = get_engine()
    with Session(engine.sync_engine) as session:
        user = User(name=_json(request)["name"])
        session.add(user)
        session.commit()
        user_id = user.id
    return JsonResponse({"id": user_id, "engine": id(engine.sync_engine)}, status=201)


def _legacy_add_user(session: Session, name: str) -> int:
    """Existing sync code taking a Session."""
    user = User(name=name)
    session.add(user)
    session.flush()
    return user.id


def sync_view_using_request_session(request: HttpRequest) -> HttpResponse:
    """A sync view writing through the request's session (committed by the
    middleware, like the async views' work)."""
    name = _json(request)["name"]
    user_id = run_in_session(_legacy_add_user, name)
    if name.startswith("fail"):
        return JsonResponse({"error": "rejected"}, status=400)
    return JsonResponse({"id": user_id, "session": id(current_session())}, status=201)


def _sync_helper(name: str) -> dict[str, Any]:
    session = current_session()  # the async view's session, seen from a sync thread
    user_id = run_in_session(_legacy_add_user, name)
    return {"session": id(session), "id": user_id, "thread": threading.get_ident()}


async def async_view_calling_sync_helper(request: HttpRequest) -> HttpResponse:
    session = current_session()
    session.add(User(name="from-async"))
    await session.flush()
    helper = await sync_to_async(_sync_helper)("from-sync-helper")
    names = (await session.scalars(select(User.name).order_by(User.id))).all()
    return JsonResponse(
        {
            "async_session": id(session),
            "helper_session": helper["session"],
            "helper_thread": helper["thread"],
            "loop_thread": threading.get_ident(),
            "names_in_transaction": list(names),
        },
        status=201,
    )


async def async_engine_id(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"engine": id(get_engine().sync_engine)})


async def two_databases(request: HttpRequest) -> HttpResponse:
    """Writes to the default database and to "other"; ``?outcome=`` says how the
    view ends: ``ok`` (201), ``duplicate`` (201, but the default database's commit
    fails), ``raise`` (an exception after both flushed)."""
    outcome = request.GET.get("outcome", "ok")
    default, other = current_session(), current_session("other")
    if outcome == "duplicate":
        default.add(
            User(name="dup", addresses=[Address(email="same@x.org"), Address(email="same@x.org")])
        )
    else:
        default.add(User(name="in-default"))
        await default.flush()
    other.add(User(name="in-other"))
    await other.flush()
    if outcome == "raise":
        raise RuntimeError("the view failed after writing to both databases")
    return JsonResponse({"written": True}, status=201)


async def wait_for_disconnect(request: HttpRequest) -> HttpResponse:
    """Writes, then waits until the request is cancelled (the client went away)."""
    session = current_session()
    session.add(User(name="abandoned"))
    await session.flush()
    assert entered is not None
    entered.set()
    await asyncio.Event().wait()
    return HttpResponse(status=201)  # pragma: no cover - never reached
