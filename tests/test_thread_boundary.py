"""The whole threading model lives in the thread-boundary layer.

Only ``async_orm/_worker.py`` and its one sibling ``async_orm/_interrupt.py`` own
threads, queues, futures and the hand-back to event loops; every other module
asks a Runner to run a callable (``docs/threading.rst``).  This test reads the
package's source, so a new ``import threading`` elsewhere fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import async_orm

PACKAGE = Path(async_orm.__file__).parent
BOUNDARY = {"_worker.py", "_interrupt.py"}
#: the demo shows which thread ran which statement; it is not library code
SHOWS_THREADS = {"__main__.py"}

FORBIDDEN = re.compile(
    r"^\s*(import|from)\s+(threading|queue|concurrent\.futures|_thread)\b"
    r"|call_soon_threadsafe|run_coroutine_threadsafe|run_sync_soon|\bSimpleQueue\b",
    re.MULTILINE,
)


def test_threads_queues_and_futures_appear_only_in_the_thread_boundary_layer() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in BOUNDARY | SHOWS_THREADS:
            continue
        for match in FORBIDDEN.finditer(path.read_text()):
            line = path.read_text()[: match.start()].count("\n") + 1
            offenders.append(f"{path.name}:{line}: {match.group(0).strip()}")
    assert not offenders, "threading outside the thread boundary: " + "; ".join(offenders)


def test_the_boundary_layer_is_where_the_threads_are() -> None:
    # the check above must be able to fail: the boundary itself is full of them
    text = (PACKAGE / "_worker.py").read_text()
    assert FORBIDDEN.search(text) is not None
    assert FORBIDDEN.search((PACKAGE / "_interrupt.py").read_text()) is not None
