"""The static types of async_orm's API, checked with ``mypy --strict`` on the
files in tests/typing (``assert_type`` lines, and ``# type: ignore`` lines that
prove a wrong call is rejected, kept honest by ``warn_unused_ignores``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
TYPING = Path(__file__).resolve().parent / "typing"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["check_types.py", "check_return_types.py"])
def test_typing_file_is_clean_under_mypy_strict(name: str) -> None:
    if sqlalchemy.__version__.startswith("2.0."):
        pytest.skip(
            "the typing files are checked against SQLAlchemy 2.1's typings (whose Result "
            "and Row are generic over a TypeVarTuple); CI runs mypy in the 2.1 environment only"
        )
    if importlib.util.find_spec("mypy") is None:
        if IN_CI:
            pytest.fail("CI=true and mypy is not installed (it is in the 'test' extra)")
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(TYPING / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"mypy --strict tests/typing/{name}:\n{done.stdout}{done.stderr}"
