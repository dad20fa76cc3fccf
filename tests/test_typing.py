"""The static types of async_orm's API, checked with ``mypy --strict`` and with
pyright (strict) on the files in tests/typing: ``assert_type`` lines, and lines
that must be rejected.  Such a line carries ``# type: ignore[code]`` for mypy and
``# pyright: ignore[rule]`` for pyright; an ignore that suppresses nothing is
itself an error under both (mypy's ``warn_unused_ignores``, part of --strict;
``reportUnnecessaryTypeIgnoreComment`` in tests/typing/pyrightconfig.json, which
also makes pyright read only its own comments), so each such line must fail
with exactly that code in each checker."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
TYPING = Path(__file__).resolve().parent / "typing"
CHECKS = sorted(path.name for path in TYPING.glob("check_*.py"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _require(module: str) -> None:
    if sqlalchemy.__version__.startswith("2.0."):
        pytest.skip(
            "the typing files are checked against SQLAlchemy 2.1's typings (whose Result "
            "and Row are generic over a TypeVarTuple); CI runs the checkers in the 2.1 "
            "environment only"
        )
    if importlib.util.find_spec(module) is None:
        _unavailable(f"{module} is not installed (pip install -r requirements-dev.txt)")


def test_the_typing_files_are_found() -> None:
    assert {"check_types.py", "check_return_types.py", "check_scoping.py"} <= set(CHECKS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", CHECKS)
def test_typing_file_is_clean_under_mypy_strict(name: str) -> None:
    _require("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(TYPING / name)],
        cwd=ROOT,  # async_orm from this checkout; typing_models from MYPYPATH
        env={**os.environ, "MYPYPATH": str(TYPING)},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"mypy --strict tests/typing/{name}:\n{done.stdout}{done.stderr}"


@pytest.mark.timeout(300)
def test_typing_files_are_clean_under_pyright_strict() -> None:
    _require("pyright")
    if shutil.which("node") is None:
        _unavailable(
            "pyright needs Node.js on PATH (apt-get install nodejs); without it the pyright "
            "package would try to download one"
        )
    # the PyPI package bundles pyright itself; IGNORE_WARNINGS skips its check for a
    # newer release, so that it runs offline
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--outputjson",
            "--project",
            str(TYPING / "pyrightconfig.json"),
            "--pythonpath",
            sys.executable,
            *(str(TYPING / name) for name in CHECKS),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    # a config that pyright could not read would silently check less (basic mode,
    # and every "# type: ignore" honoured): it says so on stderr
    assert "config" not in done.stderr.lower(), done.stderr
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run:\n{done.stdout}{done.stderr}")
    problems = [
        f"tests/typing/{Path(d['file']).name}:{d['range']['start']['line'] + 1}: "
        f"{d['severity']}: {d['message']} ({d.get('rule', '')})"
        for d in report["generalDiagnostics"]
    ]
    assert not problems, "pyright (strict) tests/typing:\n" + "\n".join(problems)
    assert report["summary"]["filesAnalyzed"] == len(CHECKS), report["summary"]
    assert done.returncode == 0, f"{done.stdout}{done.stderr}"
