"""Read replica routing: a Session subclass to copy (docs/scaling.rst shows this file).

Reads go to the replica; writes, and every statement of a transaction after its
first write, go to the primary.  Read-your-writes: after a session commits a
write, its next reads wait (at most ``replica_wait`` seconds) until the replica
has replayed that commit, and go to the primary if it has not.  The position to
wait for is ``session.info["commit_lsn"]``; pass it to a later session as
``min_lsn=`` to carry the guarantee across requests (a cookie, say).

Use it through async_orm::

    maker = async_sessionmaker(
        primary,  # an AsyncEngine: the session's own bind
        sync_session_class=RoutingSession,
        replica=replica.sync_engine,  # extra keywords go to RoutingSession
    )
    async with maker() as session:
        ...
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

_REPLAYED = sa.text("select pg_last_wal_replay_lsn() >= cast(:lsn as pg_lsn)")
_WAL_POSITION = sa.text("select cast(pg_current_wal_lsn() as text)")


class RoutingSession(Session):
    """``bind`` is the primary; ``replica`` the replica's Engine.

    ``min_lsn``: a WAL position (``session.info["commit_lsn"]`` of an earlier
    session) that the replica must have replayed before it serves this session's
    reads.  ``replica_wait``: how long a read waits for that before it goes to
    the primary instead.  ``bind_arguments={"primary": True}`` on a statement sends
    it to the primary whatever it is.
    """

    def __init__(
        self,
        *,
        replica: sa.Engine,
        min_lsn: str | None = None,
        replica_wait: float = 1.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.replica = replica
        self.replica_wait = replica_wait
        self.info["commit_lsn"] = min_lsn
        self._writing = False  # this transaction has written: stay on the primary
        self._replica_behind = False  # this transaction gave up waiting for the replica

    def get_bind(
        self,
        mapper: Any = None,
        clause: Any = None,
        *,
        primary: bool = False,
        **kw: Any,
    ) -> sa.Engine:
        primary_engine = self.bind
        assert isinstance(primary_engine, sa.Engine), "bind the session to the primary"
        if primary or self._writing or self._flushing or _is_write(clause):
            self._writing = True
            return primary_engine
        if self._replica_behind or not self._replica_has_replayed():
            return primary_engine
        return self.replica

    def _replica_has_replayed(self) -> bool:
        """True once the replica has replayed ``info["commit_lsn"]`` (if set)."""
        lsn = self.info.get("commit_lsn")
        if lsn is None:
            return True
        # the transaction's own replica connection (none extra from its pool)
        replica = self.connection(bind_arguments={"bind": self.replica})
        deadline = time.monotonic() + self.replica_wait
        while not replica.scalar(_REPLAYED, {"lsn": lsn}):
            if time.monotonic() >= deadline:
                self._replica_behind = True
                return False
            time.sleep(0.005)
        self.info["commit_lsn"] = None  # replayed: no need to ask again
        return True


def _is_write(clause: Any) -> bool:
    """Anything but a plain SELECT (DML, DDL, text(), SELECT ... FOR UPDATE) writes."""
    if clause is None or not getattr(clause, "is_select", False):
        return True
    return getattr(clause, "_for_update_arg", None) is not None


@event.listens_for(RoutingSession, "after_commit")
def _committed(session: Session) -> None:
    if isinstance(session, RoutingSession) and session._writing:
        session.info["_wrote"] = True  # its WAL position is read once its connection is back


@event.listens_for(RoutingSession, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    if not isinstance(session, RoutingSession) or transaction.parent is not None:
        return
    session._writing = session._replica_behind = False
    if session.info.pop("_wrote", False):
        # the commit is flushed to the primary's WAL by now: its position covers it
        with session.bind.connect() as conn:  # type: ignore[union-attr]
            session.info["commit_lsn"] = conn.scalar(_WAL_POSITION)
