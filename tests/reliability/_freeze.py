"""Freezing the private PostgreSQL server of the reliability tests (SIGSTOP / SIGCONT).

A frozen server is the "unreachable server" of a partial outage: its TCP port still
accepts connections (the kernel completes the handshake into the listen backlog), but
nothing answers: no query result, no authentication, no cancel request.

Only the private server is ever touched: the postmaster's pid is read from its own
data directory's ``postmaster.pid``, checked against ``/proc/<pid>/cmdline`` (a
``postgres`` process of that data directory), and its children are found in ``/proc``
by parent pid.  Every process stopped is continued on exit, whatever happened.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pytest_postgresql.executors import PostgreSQLExecutor

from tests.conftest import PG_URL

__all__ = ["Freezer", "client_sockets", "frozen", "signal_pending", "wait_for"]


def _postmaster_pid(executor: PostgreSQLExecutor) -> int:
    datadir = Path(executor.datadir)
    pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if not cmdline or not cmdline[0].endswith(b"postgres") or str(datadir).encode() not in cmdline:
        raise RuntimeError(
            f"pid {pid} from {datadir}/postmaster.pid is not that data directory's "
            f"postmaster ({cmdline!r}); refusing to signal it"
        )
    if f":{executor.port}/" in PG_URL:
        raise RuntimeError(f"the private server's port {executor.port} is the shared server's")
    return pid


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/<n>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class Freezer:
    """Stops and continues the processes of one private server, by pid."""

    def __init__(self, executor: PostgreSQLExecutor) -> None:
        self.postmaster = _postmaster_pid(executor)
        self.stopped: set[int] = set()

    def backends(self) -> list[int]:
        """Every child of the postmaster (backends and auxiliary processes)."""
        return _children(self.postmaster)

    def stop(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.stopped.add(pid)  # before the signal: resumed even if this raises
            os.kill(pid, signal.SIGSTOP)

    def stop_all(self) -> None:
        """The postmaster first (so it forks no one meanwhile), then all its children."""
        self.stop([self.postmaster])
        self.stop(self.backends())

    def resume(self, pids: Iterable[int] | None = None) -> None:
        """Continue ``pids`` (default: every process this freezer stopped)."""
        for pid in list(self.stopped if pids is None else pids):
            self.stopped.discard(pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@contextmanager
def frozen(executor: PostgreSQLExecutor, *, all_processes: bool = True) -> Iterator[Freezer]:
    """``with frozen(private_pg) as freezer:`` the server's processes are stopped inside
    the block (only the postmaster with ``all_processes=False``), and all continued on
    exit; ``freezer.resume(...)`` continues some of them earlier."""
    freezer = Freezer(executor)
    try:
        if all_processes:
            freezer.stop_all()
        else:
            freezer.stop([freezer.postmaster])
        yield freezer
    finally:
        freezer.resume()


def signal_pending(pid: int, signum: int) -> bool:
    """True when ``signum`` is pending for process ``pid`` (a stopped process keeps the
    signals sent to it pending until it is continued)."""
    bit = 1 << (signum - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("SigPnd", "ShdPnd") and int(value.strip(), 16) & bit:
            return True
    return False


#: TCP states of /proc/net/tcp
TCP_ESTABLISHED = 0x01


def client_sockets(port: int) -> dict[int, int]:
    """Local port -> TCP state of this host's IPv4 sockets connected *to* ``port`` (the
    client ends of connections to a server on ``port``), from ``/proc/net/tcp``."""
    found: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], int(fields[3], 16)
        if int(remote.rsplit(":", 1)[1], 16) == port:
            found[int(local.rsplit(":", 1)[1], 16)] = state
    return found


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll a (sync) condition about another process's state, with a deadline."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
