"""How a request's sessions end: the one policy of :mod:`async_orm.asgi` and
:mod:`async_orm.django`.

Both middlewares keep the sessions of a request (one per database) in a scoped
session, created on first use, and end them here:

* **success** (the response's status passes the commit rule: by default
  :func:`commit_on_success`, below 400): each session that has work (a
  transaction, or pending, changed or deleted objects) is committed, in order,
  before the client is told the status, so a commit that fails becomes a 500.
  If one commit fails, the sessions after it are not committed, and the first
  error is raised;
* **anything else** (an error status, an exception, a cancellation, a client that
  went away, or no commit rule): nothing is committed; closing the sessions rolls
  their transactions back;
* **always**: every session is closed, which returns its connection to the pool
  and its worker thread to the worker pool.  Closing cannot be interrupted by a
  cancellation (:meth:`AsyncSession.close` waits for the worker, then re-raises
  the ``CancelledError``), and every session is closed even when closing another
  one failed.

After an exception (:func:`abort_sessions`), errors while closing are logged, so
that the exception that ended the request is the one that propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from .session import AsyncSession

__all__ = [
    "CommitRule",
    "abort_sessions",
    "commit_on_success",
    "end_sessions",
    "has_work",
    "settle_sessions",
]

logger = logging.getLogger("async_orm")

CommitRule = Callable[[int], bool]
"""Called with a response's status: true commits the request's work."""


def commit_on_success(status: int) -> bool:
    """The default commit rule of both middlewares: commit for statuses below 400
    (a redirect included), roll back for client and server errors."""
    return status < 400


def has_work(session: AsyncSession) -> bool:
    """True if committing or rolling back ``session`` would do anything."""
    return bool(session.in_transaction() or session.new or session.dirty or session.deleted)


def should_commit(rule: CommitRule | None, status: int | None) -> bool:
    """Whether a response with ``status`` (``None``: no response) commits under ``rule``
    (``None``: never)."""
    return rule is not None and status is not None and rule(status)


async def _commit_each(sessions: Sequence[AsyncSession]) -> BaseException | None:
    """Commit each session that has work, in order, until one fails; its error."""
    for session in sessions:
        if has_work(session):
            try:
                await session.commit()
            except BaseException as failure:
                return failure
    return None


async def _call_each(
    sessions: Sequence[AsyncSession],
    method: Callable[[AsyncSession], Awaitable[None]],
    error: BaseException | None,
) -> BaseException | None:
    """``await method(session)`` for every session whatever happens; the first error
    (``error`` if already set), later ones logged."""
    for session in sessions:
        try:
            await method(session)
        except BaseException as failure:
            if error is None:
                error = failure
            else:
                logger.error("ending a request session failed", exc_info=failure)
    return error


async def settle_sessions(sessions: Sequence[AsyncSession], *, commit: bool) -> None:
    """Commit (``commit``) or roll back every session that has work, leaving them open.

    For a response that starts before the request's code is done (a streaming
    body): the status line must not go out before its work is settled.  If a
    commit fails, the sessions after it (and the failed one) are rolled back, and
    the first error is raised.
    """
    error = await _commit_each(sessions) if commit else None
    # what is committed has no work left: this rolls back the rest
    error = await _call_each(
        [session for session in sessions if has_work(session)], AsyncSession.rollback, error
    )
    if error is not None:
        raise error


async def end_sessions(sessions: Sequence[AsyncSession], *, commit: bool) -> None:
    """End a request's sessions: commit each one that has work if ``commit``, then
    close them all (which rolls back whatever was not committed).

    If a commit fails, the sessions after it are not committed; every session is
    still closed (shielded: a cancellation waits for each close), and the first
    error (of a commit, else of a close) is raised.
    """
    error = await _commit_each(sessions) if commit else None
    error = await _call_each(sessions, AsyncSession.close, error)
    if error is not None:
        raise error


async def abort_sessions(sessions: Sequence[AsyncSession]) -> None:
    """Close a request's sessions after an exception, committing nothing.

    An ``Exception`` while closing is logged rather than raised, so that the
    exception that ended the request propagates; a cancellation while closing is
    re-raised once every session is closed.
    """
    try:
        await end_sessions(sessions, commit=False)
    except Exception:
        logger.exception("closing the request's sessions after an error failed")
