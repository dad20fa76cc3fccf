"""``python -m async_orm demo`` as a user runs it: in a subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from async_orm.__main__ import REQUESTS, main

from .conftest import PG_URL


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-m", "async_orm", "demo", *args],
        capture_output=True,
        text=True,
        timeout=50,
    )


def test_demo_counts_every_concurrent_view(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        done = run_demo()  # its default: a SQLite file in a temporary directory
    else:  # in a schema of its own, so that concurrent runs do not share the demo's tables
        schema = request.getfixturevalue("pg_schema")
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        done = run_demo("--url", url.render_as_string(hide_password=False))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert f"total views recorded: {REQUESTS} (expected {REQUESTS})" in done.stdout
    assert done.stdout.count(" view(s), ran on async_orm-worker-") == REQUESTS
    assert "never on the loop thread; greenlet imported: False." in done.stdout


def test_demo_names_what_to_install_for_a_missing_driver() -> None:
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb (mysqlclient) is installed here; the test needs it missing")
    done = run_demo("--url", "mysql+mysqldb://user@127.0.0.1/db")
    assert done.returncode == 2
    assert done.stderr == (
        "python -m async_orm demo: mysql+mysqldb needs the MySQLdb driver, which is not "
        "installed: pip install mysqlclient\n"
    )


def test_bench_command_says_where_the_benchmark_suite_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e . -e ./benchmarks && python -m async_orm_bench" in err
