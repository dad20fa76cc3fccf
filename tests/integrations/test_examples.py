"""The examples run as their docs say: each is started in a subprocess under
uvicorn on 127.0.0.1 (port 0: the OS picks a free one, uvicorn reports it),
driven with real HTTP requests, and stopped with SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_URL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class Server:
    """A subprocess serving HTTP; its combined output is collected by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
        }
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.search(r"Uvicorn running on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self.started.set()
        self.started.set()  # the process ended: stop waiting

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_started(self) -> str:
        if not self.started.wait(STARTUP_TIMEOUT) or not self.url:
            self.kill()
            pytest.fail(f"the example did not start:\n{self.output}")
        return self.url

    def stop(self) -> int:
        """SIGINT (Ctrl+C), as a user stops it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            returncode = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the example did not stop on SIGINT:\n{self.output}")
        self._close()
        return returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)
        self._close()

    def _close(self) -> None:
        self._reader.join(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def database_args(backend: str, request: pytest.FixtureRequest) -> list[str]:
    """No flag on SQLite (the default database, in the working directory);
    ``--database-url`` with a private schema on PostgreSQL."""
    if backend == "sqlite":
        return []
    schema = request.getfixturevalue("pg_schema")
    return [
        "--database-url",
        f"{PG_URL}?options=-csearch_path%3D{schema}&application_name={schema}",
    ]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(script: Path, *args: str) -> Server:
        server = Server([str(script), "--port", "0", *args], cwd=tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.kill()


def exercise_todo_api(url: str, backend: str) -> None:
    """The same to-do API in both examples: create, list, update, delete."""
    with httpx.Client(base_url=url, timeout=10) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["database"] == backend
        created = client.post("/todos", json={"title": "write docs"})
        assert created.status_code == 201, created.text
        todo = created.json()
        assert todo["title"] == "write docs" and todo["done"] is False
        client.post("/todos", json={"title": "ship it"})
        listed = client.get("/todos").json()
        assert [t["title"] for t in listed] == ["write docs", "ship it"]
        patched = client.patch(f"/todos/{todo['id']}", json={"done": True})
        assert patched.json()["done"] is True
        assert client.get(f"/todos/{todo['id']}").json()["done"] is True
        assert client.delete(f"/todos/{todo['id']}").status_code == 204
        assert client.get(f"/todos/{todo['id']}").status_code == 404
        assert [t["title"] for t in client.get("/todos").json()] == ["ship it"]


def test_fastapi_example_runs(
    serve: Any, database_args: list[str], backend: str, tmp_path: Path
) -> None:
    server = serve(EXAMPLES / "fastapi_app" / "app.py", *database_args)
    url = server.wait_started()
    exercise_todo_api(url, backend)
    assert server.stop() == 0, server.output
    # the lifespan ran to its end: the middleware disposed of the engine before this
    assert "Application shutdown complete" in server.output
    if backend == "sqlite":
        assert (tmp_path / "todos.db").exists()  # the default database


def test_django_example_runs(
    serve: Any, database_args: list[str], backend: str, tmp_path: Path
) -> None:
    server = serve(EXAMPLES / "django_project" / "serve.py", *database_args)
    url = server.wait_started()
    exercise_todo_api(url, backend)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/stats").json() == {"open": 1, "done": 0}  # a sync view
    assert server.stop() == 0, server.output
    assert "tables ready on" in server.output
    if backend == "sqlite":
        assert (tmp_path / "todos.db").exists()
