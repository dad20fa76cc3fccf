"""Four application server processes, each with 100 requests in flight, writing
through one PgBouncer of 20 server connections: no error, every row exactly once.

Runs the benchmark command itself (benchmarks/scaleout.py), small, so that the
figures on docs/scaling.rst come from code that this test keeps working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.topology._servers import Topology

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaleout.py"


@pytest.mark.timeout(120)
def test_four_processes_through_one_bouncer_write_every_row_once(
    topology: Topology, database: str, tmp_path: Path
) -> None:
    out = tmp_path / "scaleout.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--url",
            topology.bouncer.url(database),
            "--server-url",
            topology.primary.url(database),
            "--processes",
            "4",
            "--requests",
            "100",
            "--concurrency",
            "100",
            "--repeat",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (step,) = json.loads(out.read_text())["steps"]
    assert step["errors"] == {}
    assert step["written"] == step["expected"] == 400
    assert step["exactly_once"]
    # the bouncer held the server to its pool, whatever the clients asked for
    assert 0 < step["peak_server_connections"] <= topology.bouncer.pool_size

    # counted again here, without the benchmark's code: 400 distinct keys, 100 a process
    with psycopg.connect(
        host="127.0.0.1", port=topology.primary.port, user="postgres", dbname=database
    ) as conn:
        rows = conn.execute(
            "select process, count(*), count(distinct key) from scaleout_rows "
            "group by process order by process"
        ).fetchall()
    assert rows == [(p, 100, 100) for p in range(4)]
