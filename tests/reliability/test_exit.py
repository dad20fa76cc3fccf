"""Exit: a process with open sessions and a running statement exits promptly.

Each case runs a small program in a subprocess (with a timeout, so a hang fails
the test instead of hanging CI).  The program opens two sessions, leaves one
in a transaction, starts a statement that would run for minutes, waits until
the statement runs, and then exits: by returning from ``asyncio.run()`` (which
cancels the task awaiting the statement), by ``sys.exit()`` in the loop, by Ctrl-C
(SIGINT), or by the main thread leaving while the loop runs in another thread
(nothing is cancelled or closed; the worker threads are daemon threads and must
not hold the interpreter).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.reliability

SLOW = {
    "postgresql": "select pg_sleep(30)",
    "sqlite": (
        "with recursive c(x) as (select 1 union all select x + 1 from c limit 2000000000) "
        "select count(*) from c"
    ),
}

PROGRAM = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    import sqlalchemy as sa
    import async_orm

    url, kw, slow, how = json.loads(sys.argv[1])
    started = threading.Event()

    async def main():
        engine = async_orm.create_async_engine(url, **kw)

        def on_statement(conn, cursor, statement, *args):
            if statement == slow:
                started.set()

        sa.event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
        idle_in_transaction = async_orm.AsyncSession(engine)
        await idle_in_transaction.execute(sa.text("select 1"))
        running = async_orm.AsyncSession(engine)
        task = asyncio.create_task(running.execute(sa.text(slow)))
        await asyncio.to_thread(started.wait, 20)
        if how != "exit from thread":
            print("statement running", flush=True)
        if how == "sys.exit":
            sys.exit(0)  # from the loop, the statement still running
        if how == "SIGINT":
            await task  # until Ctrl-C: asyncio.run() cancels us, and so the statement
        return task  # asyncio.run() cancels the task on the way out

    if how == "exit from thread":
        # the main thread leaves while the loop, in another thread, awaits forever
        # and the statement still runs on a worker
        def run():
            asyncio.run(main_forever())

        async def main_forever():
            await main()
            await asyncio.Event().wait()

        threading.Thread(target=run, daemon=True).start()
        if started.wait(20):
            print("statement running", flush=True)
        sys.exit(0)
    asyncio.run(main())
    print("asyncio.run returned", flush=True)
    """
)


def run_program(db_url: tuple[str, dict[str, Any]], backend: str, how: str) -> tuple[float, str]:
    url, kw = db_url
    args = json.dumps([url, kw, SLOW[backend], how])
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, args],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=Path(__file__).resolve().parents[2],
    )
    took = time.monotonic() - started
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "statement running" in done.stdout, done.stdout + done.stderr
    return took, done.stdout + done.stderr


def test_ctrl_c_during_a_running_statement_exits_promptly(
    db_url: tuple[str, dict[str, Any]], backend: str
) -> None:
    url, kw = db_url
    args = json.dumps([url, kw, SLOW[backend], "SIGINT"])
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-c", PROGRAM, args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # blocks until the statement runs
            assert line.strip() == "statement running", line + process.stderr.read()
            interrupted_at = time.monotonic()
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    took = time.monotonic() - interrupted_at
    assert time.monotonic() - started < 45
    assert "KeyboardInterrupt" in err, out + err
    assert process.returncode != 0
    assert took < 10, f"the process took {took:.1f} s to exit after Ctrl-C:\n{out}{err}"


@pytest.mark.parametrize("how", ["asyncio.run returns", "sys.exit", "exit from thread"])
def test_process_with_open_sessions_and_a_running_statement_exits_promptly(
    db_url: tuple[str, dict[str, Any]], backend: str, how: str
) -> None:
    took, output = run_program(db_url, backend, how)
    # the statement would run for 30 s (PostgreSQL) or minutes (SQLite); the
    # interpreter start and imports take a second or two
    assert took < 15, f"the process took {took:.1f} s to exit:\n{output}"
