"""Interrupting a running statement at the driver, off the event loop.

Part of the thread boundary (with :mod:`async_orm._worker`, which decides *when*
to interrupt).  This module knows *how*: psycopg's ``cancel_safe()`` (3.2+) or
``cancel()``, sqlite3's ``interrupt()``, and for PyMySQL a ``KILL QUERY`` sent over
a short-lived second connection, as the ``mysql`` client does on Ctrl-C.

Each attempt runs on a short-lived daemon thread of its own
(``async_orm-interrupt-N``), never on the loop and never behind another attempt:
psycopg's cancel request is network I/O, and one that waits on a frozen server must
not delay the interrupt of a statement on a healthy one.  An attempt that fails
(the server did not answer) or that landed before the statement started (the
server then ignores it) is repeated every :data:`RETRY_INTERVAL` seconds for as long
as that same call still runs, and never once it has finished.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final

_log = logging.getLogger("async_orm")

#: seconds between two attempts to interrupt the same call
RETRY_INTERVAL: Final = 0.1
#: seconds one psycopg cancel request may take (a frozen server never answers)
CANCEL_TIMEOUT: Final = 2.0
#: attempts per call, after which the call is left to finish on its own
MAX_ATTEMPTS: Final = 300
#: seconds the call is held after an attempt: a cancel request reaches the backend as
#: a signal some time after the client's request returns, and must land while the
#: cancelled call still holds the connection, never on the next statement
SETTLE: Final = 0.1

_names = itertools.count(1)


def interrupt_connection(dbapi_conn: Any) -> None:
    """Interrupt whatever ``dbapi_conn`` is running (a no-op when it is idle)."""
    cancel_safe = getattr(dbapi_conn, "cancel_safe", None)
    if cancel_safe is not None:
        cancel_safe(timeout=CANCEL_TIMEOUT)
        return
    for name in ("cancel", "interrupt"):
        method = getattr(dbapi_conn, name, None)
        if method is not None:
            method()
            return
    if callable(getattr(dbapi_conn, "thread_id", None)) and hasattr(dbapi_conn, "host"):
        _kill_mysql_query(dbapi_conn)


def _kill_mysql_query(dbapi_conn: Any) -> None:
    killer = type(dbapi_conn)(
        host=dbapi_conn.host,
        port=dbapi_conn.port,
        user=dbapi_conn.user,
        password=dbapi_conn.password,
        unix_socket=getattr(dbapi_conn, "unix_socket", None),
        ssl=dbapi_conn.ctx
        if isinstance(getattr(dbapi_conn, "_sock", None), ssl.SSLSocket)
        else None,
        connect_timeout=5,
    )
    try:
        with killer.cursor() as cursor:
            cursor.execute(f"KILL QUERY {int(dbapi_conn.thread_id())}")
    finally:
        killer.close()


class Interruption:
    """The repeated attempts to interrupt one running call.

    ``still_running()`` says whether the call is still running; ``attempt()``
    interrupts it once (it is called with the call held, so that the call cannot
    finish and the worker cannot start its next one while the interrupt is sent:
    ``hold`` is that lock).  Attempts go on until the call finishes.
    """

    __slots__ = ("attempt", "attempts", "hold", "still_running")

    def __init__(
        self,
        attempt: Callable[[], None],
        still_running: Callable[[], bool],
        hold: threading.Lock,
    ) -> None:
        self.attempt = attempt
        self.still_running = still_running
        self.hold = hold
        self.attempts = 0

    def start(self) -> None:
        threading.Thread(
            target=self._run, name=f"async_orm-interrupt-{next(_names)}", daemon=True
        ).start()

    def _run(self) -> None:
        stop = threading.Event()
        while self.attempts < MAX_ATTEMPTS:
            # holding the call's lock, the call cannot finish (so the interrupt can
            # never land on the next one) until the driver has the interrupt
            with self.hold:
                if not self.still_running():
                    return
                self.attempts += 1
                try:
                    self.attempt()
                except BaseException:  # nothing may kill this thread; try again
                    if self.attempts == 1:
                        _log.warning(
                            "async_orm could not interrupt a running statement; retrying "
                            "while it runs",
                            exc_info=True,
                        )
                else:
                    stop.wait(SETTLE)
            stop.wait(RETRY_INTERVAL)
