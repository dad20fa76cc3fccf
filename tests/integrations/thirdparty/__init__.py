"""Applications written for ``sqlalchemy.ext.asyncio`` libraries, run unchanged on
async_orm through ``install_as_sqlalchemy_asyncio()``.

Each ``app_*.py`` is a script, run by ``tests/integrations/test_thirdparty_*.py``
in a subprocess of its own (the stand-in replaces ``sys.modules`` entries for the
whole process, so it must not leak into the rest of the test run).  A script
reads its database URL from ``THIRDPARTY_DB_URL``, prints ``greenlet: absent`` or
``greenlet: present``, asserts what its library's users would check, and ends
by printing ``OK``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import PG_URL, private_pg_schema

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TIMEOUT = 50.0  # under the suite's 60 s pytest-timeout, so the output is shown


def require(*distributions: str) -> None:
    """Skip (with the reason shown) unless these distributions are installed; they
    are not imported here, since importing them imports sqlalchemy.ext.asyncio."""
    for name in distributions:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.skip(
                f"{name} is not installed: pip install -e '.[thirdparty]' (the tested "
                "library versions)"
            )


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for a fresh database on ``backend``: a SQLite file, or a PostgreSQL
    schema of its own (search_path and application_name in the URL's query)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    with private_pg_schema("tp") as schema:
        options = quote(f"-csearch_path={schema}")
        yield f"{PG_URL}?options={options}&application_name={schema}"


def greenlet_importable() -> bool:
    """Whether this test run can import greenlet (CI's runs cannot)."""
    completed = subprocess.run(
        [sys.executable, "-c", "import greenlet"], capture_output=True, timeout=TIMEOUT
    )
    return completed.returncode == 0


def run_app(
    script: str,
    url: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    args: tuple[str, ...] = (),
    greenlet: bool | None = None,
) -> str:
    """Run ``script`` (a file of this folder) with ``url``; fail the test with its
    output unless it exits 0 having printed ``OK`` and found greenlet importable
    as ``greenlet`` says (default: as in this test run).  Returns its output."""
    full_env = {k: v for k, v in os.environ.items() if k != "THIRDPARTY_DB_URL"}
    full_env.update(env or {})
    full_env["THIRDPARTY_DB_URL"] = url
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    completed = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", str(HERE / script), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0 or "\nOK\n" not in "\n" + completed.stdout:
        pytest.fail(f"{script} failed (exit {completed.returncode}):\n{output}", pytrace=False)
    if greenlet is None:
        greenlet = greenlet_importable()
    expected = "greenlet: present" if greenlet else "greenlet: absent"
    assert expected in completed.stdout, output
    return output
