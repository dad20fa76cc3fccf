"""The errors async_orm raises.

The first three mirror ``sqlalchemy.ext.asyncio.exc``; the rest are this
library's own.  Each is a subclass of the SQLAlchemy error that code written
for ``sqlalchemy.ext.asyncio`` already catches in that situation, and each
message ends with the section of the "Errors" page of the documentation that
explains it, named in words.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

__all__ = [
    "AsyncBindNotFound",
    "AsyncContextAlreadyStarted",
    "AsyncContextNotStarted",
    "AsyncDriverURLError",
    "AsyncMethodRequired",
    "CrossLoopError",
    "EventLoopIOError",
    "ReentrantCallError",
    "RollbackRequiredAfterCancel",
    "WorkerSlotTimeout",
]


class _Documented(sa_exc.SQLAlchemyError):
    """Points at this library's errors reference instead of SQLAlchemy's."""

    code: str | None = None

    def _code_str(self) -> str:
        if not self.code:
            return ""
        return f"(see 'Errors reference' in the async_orm docs, section {self.code})"


class AsyncMethodRequired(_Documented, sa_exc.InvalidRequestError):
    """An API that needs an awaitable method was used in a sync way, e.g. a
    server-side cursor result from ``execute()`` instead of ``stream()``."""

    code = "async-method-required"


class AsyncContextNotStarted(_Documented, sa_exc.InvalidRequestError):
    """A startable context (connection, transaction) was used before being
    awaited or entered with ``async with``."""

    code = "async-context-not-started"


class AsyncContextAlreadyStarted(_Documented, sa_exc.InvalidRequestError):
    """A startable context (connection, transaction) was started twice."""

    code = "async-context-already-started"


class AsyncBindNotFound(_Documented, sa_exc.InvalidRequestError):
    """A sync bind has no async counterpart known to the AsyncSession (it was set
    on ``sync_session`` directly instead of on the AsyncSession)."""

    code = "async-bind-not-found"


class EventLoopIOError(_Documented, sa_exc.MissingGreenlet):
    """SQL would have run on a thread whose event loop is running (a lazy load,
    an expired attribute, a sync call on ``sync_session``), blocking the loop.

    Subclasses :class:`sqlalchemy.exc.MissingGreenlet`, which
    ``sqlalchemy.ext.asyncio`` raises in the same situations.
    """

    code = "event-loop-io"


class WorkerSlotTimeout(_Documented, sa_exc.TimeoutError):
    """No worker slot of the engine became free within ``worker_timeout``:
    all of them are held by open sessions or connections."""

    code = "worker-slot-timeout"


class CrossLoopError(_Documented, sa_exc.InvalidRequestError):
    """One session or connection was used from two event loops at once."""

    code = "cross-loop"


class ReentrantCallError(_Documented, sa_exc.InvalidRequestError):
    """The async API of a session was awaited from inside its own ``run_sync``
    function, which would deadlock."""

    code = "reentrant-call"


class RollbackRequiredAfterCancel(_Documented, sa_exc.PendingRollbackError):
    """A call of this session (or connection) was cancelled while it ran; its
    transaction is in an unknown state until ``rollback()``."""

    code = "rollback-after-cancel"


class AsyncDriverURLError(_Documented, sa_exc.ArgumentError):
    """``create_async_engine`` was given an async driver's URL; async_orm runs
    sync drivers."""

    code = "async-driver-url"
