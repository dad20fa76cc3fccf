"""Run SQLAlchemy's own asyncio tests against async_orm (issue 15).

    python -m tests.conformance [--db postgresql|sqlite|all] [options] [-- pytest args]

For the installed SQLAlchemy version X it

1. downloads SQLAlchemy's sdist (``pip download --no-deps --no-binary sqlalchemy
   sqlalchemy==X``; cached, nothing of SQLAlchemy's is committed here),
2. unpacks its ``test/`` into a temporary directory, rewrites the imports of
   ``test/ext/asyncio/test_engine.py``, ``test_session.py`` and
   ``test_scoping.py`` from ``sqlalchemy.ext.asyncio`` to async_orm, and
   replaces ``test/conftest.py`` with one that loads SQLAlchemy's installed test
   plugin plus ``tests.conformance.plugin``,
3. runs them on each backend with SQLAlchemy's pytest plugin (``--dburi``):
   PostgreSQL through psycopg 3 (sync) in a private database created for the
   run, and a SQLite file,
4. prints ``N passed, M failed of T`` per backend and compares every failure
   with ``expected_failures.txt``: an unexpected failure or an unexpected pass
   makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXPECTED_FILE = HERE / "expected_failures.txt"
TEST_FILES = ("test_engine.py", "test_session.py", "test_scoping.py")
TEST_DIR = "test/ext/asyncio"
DEFAULT_PG_URL = os.environ.get(
    "ASYNC_ORM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DEFAULT_CACHE = Path(
    os.environ.get(
        "ASYNC_ORM_CONFORMANCE_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "async_orm-conformance",
    )
)
BACKENDS = ("postgresql", "sqlite")
REQUIREMENTS = "tests.conformance.requirements:AsyncOrmRequirements"

#: (pattern, replacement, required): applied in order to each copied test file
REWRITES: tuple[tuple[str, str, bool], ...] = (
    (
        r"^from sqlalchemy\.ext\.asyncio\.base import ReversibleProxy$",
        "from tests.conformance.shim import ReversibleProxy",
        False,
    ),
    (
        r"^from sqlalchemy\.util import greenlet_spawn$",
        "from tests.conformance.shim import greenlet_spawn",
        False,
    ),
    (
        r"^(\s*)from sqlalchemy\.util\.concurrency import (await_only|await_)$",
        r"\1from tests.conformance.shim import \2",
        False,
    ),
    # imports and mock.patch() targets: sqlalchemy.ext.asyncio[.engine ...] -> async_orm
    (r"\bsqlalchemy\.ext\.asyncio\b", "async_orm", True),
)

CONFTEST = '''\
"""Written by tests/conformance (async_orm): SQLAlchemy's installed test plugin,
instead of the sdist's conftest, which would put the sdist's lib/ on sys.path."""

import sys

import pytest

collect_ignore_glob = []
if sys.version_info < (3, 14):
    collect_ignore_glob.append("*_py314.py")

pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402,F403
'''


def log(message: str) -> None:
    print(f"conformance: {message}", flush=True)


# --------------------------------------------------------------------------
# the sdist


def sdist_for(version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    found = [p for p in glob.glob(str(cache / f"*-{version}.tar.gz")) if "sqlalchemy" in p.lower()]
    if found:
        return Path(found[0])
    log(f"downloading the SQLAlchemy {version} sdist into {cache}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",  # the sdist of SQLAlchemy only: its build requirements
            "sqlalchemy",  # (Cython, for the metadata step) come as wheels
            f"sqlalchemy=={version}",
            "-d",
            str(cache),
        ],
        check=True,
    )
    found = [p for p in glob.glob(str(cache / f"*-{version}.tar.gz")) if "sqlalchemy" in p.lower()]
    if not found:
        raise SystemExit(
            f"conformance: pip download left no sqlalchemy-{version}.tar.gz in {cache}"
        )
    return Path(found[0])


def unpack(sdist: Path, into: Path) -> Path:
    """Extract the sdist's test/, setup.cfg and pyproject.toml (not lib/: the
    installed SQLAlchemy is the one under test)."""
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) >= 2 and (
                parts[1] == "test"
                or (len(parts) == 2 and parts[1] in ("setup.cfg", "pyproject.toml"))
            ):
                members.append(member)
        if not members:
            raise SystemExit(f"conformance: {sdist} has no test/ directory")
        root = members[0].name.split("/")[0]
        if sys.version_info >= (3, 12):
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)  # our own download of a known sdist
    return into / root


def rewrite(root: Path) -> None:
    for name in TEST_FILES:
        path = root / TEST_DIR / name
        text = path.read_text(encoding="utf-8")
        for pattern, replacement, required in REWRITES:
            text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
            if required and not count:
                raise SystemExit(f"conformance: {pattern!r} matched nothing in {path}")
        if "sqlalchemy.ext.asyncio" in text:
            raise SystemExit(f"conformance: {path} still refers to sqlalchemy.ext.asyncio")
        path.write_text(text, encoding="utf-8")
    (root / "test" / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    # SQLAlchemy's plugin reads the requirements class from setup.cfg after its
    # --requirements option, so the option alone is overridden
    setup_cfg = root / "setup.cfg"
    text, count = re.subn(
        r"^requirement_cls\s*=.*$",
        f"requirement_cls = {REQUIREMENTS}",
        setup_cfg.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    if count != 1:
        raise SystemExit(f"conformance: no requirement_cls line in {setup_cfg}")
    setup_cfg.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------
# the databases


def _admin_engine(url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")


def pg_prepare(base_url: str, private: bool) -> tuple[str, str | None]:
    """The URL to test on (a new database unless ``private`` is false) with the
    schemas SQLAlchemy's tests expect; and the database to drop afterwards."""
    import sqlalchemy as sa

    url = sa.make_url(base_url)
    created = None
    if private:
        created = f"async_orm_conformance_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = _admin_engine(base_url)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {created}")
        admin.dispose()
        url = url.set(database=created)
    target = url.render_as_string(hide_password=False)
    engine = _admin_engine(target)
    with engine.connect() as conn:
        for schema in ("test_schema", "test_schema_2"):
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    engine.dispose()
    return target, created


def pg_drop(base_url: str, database: str) -> None:
    admin = _admin_engine(base_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    admin.dispose()


# --------------------------------------------------------------------------
# expected failures


@dataclass
class Expected:
    test: str
    backends: frozenset[str]
    versions: str
    kind: str
    reason: str
    line: int


KINDS = ("fix", "difference", "flaky")


def normalize(nodeid: str) -> str:
    """``test/ext/asyncio/test_engine.py::AsyncEngineTest_postgresql+psycopg_15_8::test_x``
    -> ``test_engine.py::AsyncEngineTest::test_x`` (SQLAlchemy names a class per
    backend for ``__backend__`` tests)."""
    nodeid = nodeid.removeprefix(TEST_DIR + "/")
    parts = nodeid.split("::")
    if len(parts) >= 2:
        parts[1] = re.sub(r"_(postgresql|sqlite)\+?\w*$", "", parts[1])
    return "::".join(parts)


def load_expected(path: Path) -> list[Expected]:
    """Entries: ``<test id> | <backends> | <SQLAlchemy versions> | <kind> | <reason>``,
    backends ``postgresql,sqlite`` or ``*``, versions a prefix like ``2.1`` or
    ``*``, kind ``fix`` (an async_orm bug, to be fixed), ``difference`` (deliberate)
    or ``flaky`` (fails or passes by timing; both accepted)."""
    entries = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) != 5 or fields[3] not in KINDS:
            raise SystemExit(
                f"conformance: {path}:{number}: want '<test id> | <backends> | <versions> | "
                f"fix|difference|flaky | <reason>', got {raw!r}"
            )
        test, backends, versions, kind, reason = fields
        names = frozenset(BACKENDS if backends == "*" else backends.split(","))
        entries.append(Expected(test, names, versions, kind, reason, number))
    return entries


def _applies(entry: Expected, version: str) -> bool:
    return entry.versions == "*" or any(
        version == v or version.startswith(v + ".") for v in entry.versions.split(",")
    )


def expected_for(entries: list[Expected], backend: str, version: str) -> dict[str, Expected]:
    return {e.test: e for e in entries if backend in e.backends and _applies(e, version)}


# --------------------------------------------------------------------------
# running


def run_backend(
    root: Path, backend: str, dburi: str, extra: list[str], verbose: bool, timeout: int
) -> tuple[dict[str, dict[str, str]], Path, int]:
    results = root / f"results-{backend}.json"
    output = root / f"pytest-{backend}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(root), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["ASYNC_ORM_CONFORMANCE_RESULTS"] = str(results)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.pop("ASYNC_ORM_ALLOW_LOOP_IO", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        "pyproject.toml",
        "--rootdir",
        ".",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.conformance.plugin",
        "--tb=native",
        "-q",
        "-rN",
        "--strict-markers",
        "--dburi",
        dburi,
        "--requirements",
        REQUIREMENTS,
    ]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command += ["-p", "pytest_timeout", f"--timeout={timeout}"]
    command += [f"{TEST_DIR}/{name}" for name in TEST_FILES] + extra
    started = time.monotonic()
    with output.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            if verbose:
                sys.stdout.write(line)
        code = process.wait()
    seconds = time.monotonic() - started
    log(f"{backend}: pytest exit status {code} in {seconds:.0f}s; output in {output}")
    if not results.exists():
        tail = output.read_text(encoding="utf-8").splitlines()[-30:]
        print("\n".join(tail))
        raise SystemExit(f"conformance: {backend}: pytest wrote no results ({results})")
    return json.loads(results.read_text(encoding="utf-8")), output, code


def report(
    backend: str,
    version: str,
    outcomes: dict[str, dict[str, str]],
    expected: dict[str, Expected],
    complete: bool,
) -> list[str]:
    """Print the counts and every failure; return the problems (unexpected
    failures and unexpected passes; listed tests that did not run, when the run
    was ``complete``, i.e. not narrowed by pytest arguments)."""
    by_test: dict[str, dict[str, str]] = {}
    for nodeid, result in outcomes.items():
        by_test[normalize(nodeid)] = result
    passed = sorted(t for t, r in by_test.items() if r["outcome"] == "passed")
    failed = sorted(t for t, r in by_test.items() if r["outcome"] == "failed")
    skipped = sorted(t for t, r in by_test.items() if r["outcome"] == "skipped")
    total = len(passed) + len(failed)
    problems = []
    print()
    print(f"== {backend} (SQLAlchemy {version}) ==")
    for test in failed:
        entry = expected.get(test)
        if entry is None:
            problems.append(f"{backend}: UNEXPECTED FAILURE {test}")
            print(f"  FAILED (unexpected)  {test}\n      {by_test[test]['reason']}")
        else:
            print(f"  failed (expected, {entry.kind})  {test}\n      {entry.reason}")
    for test in sorted(expected):
        ran = by_test.get(test)
        if ran is None:
            if complete:
                problems.append(
                    f"{backend}: expected failure {test} (line {expected[test].line}) did not run"
                )
        elif ran["outcome"] == "passed" and expected[test].kind != "flaky":
            problems.append(
                f"{backend}: UNEXPECTED PASS {test}: remove its line ({expected[test].line}) "
                "from the expected-failures file"
            )
        elif ran["outcome"] == "skipped":
            problems.append(f"{backend}: expected failure {test} was skipped: {ran['reason']}")
    print(f"{backend}: {len(skipped)} skipped (not counted)")
    print(f"{len(passed)} passed, {len(failed)} failed of {total}")
    return problems


def write_expected(
    path: Path,
    version: str,
    ran: tuple[str, ...],
    failures: dict[str, dict[str, str]],
    old: list[Expected],
) -> None:
    """Rewrite the file in place from this run: ``failures`` is test -> backend ->
    failure message for the backends in ``ran``.  Comments and entries for other
    SQLAlchemy versions or backends stay; entries that still fail keep their
    kind and reason (their backends column follows the run); entries that pass
    go (``flaky`` ones stay); new failures are appended with kind ``fix`` and
    their message."""
    by_line = {entry.line: entry for entry in old}
    known = {entry.test for entry in old}
    lines = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entry = by_line.get(number)
        if entry is None:
            lines.append(raw)
            continue
        backends = set(entry.backends)
        if _applies(entry, version) and entry.kind != "flaky":
            backends = (backends - set(ran)) | set(failures.get(entry.test, {}))
        if backends:
            names = "*" if backends == set(BACKENDS) else ",".join(sorted(backends))
            lines.append(
                f"{entry.test} | {names} | {entry.versions} | {entry.kind} | {entry.reason}"
            )
    new = sorted(test for test in failures if test not in known)
    if new:
        lines += ["", f"# ---- new failures (SQLAlchemy {version}): classify them", ""]
        for test in new:
            names = ",".join(sorted(failures[test]))
            reason = next(iter(failures[test].values()))
            lines.append(f"{test} | {names} | * | fix | {reason}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument(
        "--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL (psycopg) URL; default %(default)s"
    )
    parser.add_argument(
        "--pg-use-database",
        action="store_true",
        help="run in the --pg-url database itself instead of a private one created for the run",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="sdist cache (default %(default)s)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="unpack here (default: a new temporary directory, removed after a clean run)",
    )
    parser.add_argument("--expected", type=Path, default=EXPECTED_FILE)
    parser.add_argument(
        "--update-expected",
        action="store_true",
        help="rewrite --expected from this run's failures (new entries get kind 'fix')",
    )
    parser.add_argument(
        "--timeout", type=int, default=120, help="per-test timeout (pytest-timeout)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="stream pytest's output")
    parser.add_argument(
        "pytest_args", nargs="*", help="after --: extra pytest arguments (e.g. -k name)"
    )
    args = parser.parse_args(argv)

    if importlib.util.find_spec("greenlet") is not None:
        log(
            "greenlet is importable here; async_orm's claim is working without it. "
            "Run in an environment without it (pip uninstall -y greenlet)."
        )
        return 2
    import sqlalchemy

    version = sqlalchemy.__version__
    backends = BACKENDS if args.db == "all" else (args.db,)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="async_orm-conformance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = unpack(sdist_for(version, args.cache), workdir)
    rewrite(root)
    log(f"SQLAlchemy {version} tests in {root}")

    entries = load_expected(args.expected)
    problems: list[str] = []
    failures: dict[str, dict[str, str]] = {}
    summary = []
    for backend in backends:
        created = None
        if backend == "postgresql":
            dburi, created = pg_prepare(args.pg_url, private=not args.pg_use_database)
        else:
            # relative: SQLAlchemy's sqlite provisioning renames the file from its name tokens
            dburi = "sqlite:///conformance.db"
        try:
            outcomes, _, code = run_backend(
                root, backend, dburi, args.pytest_args, args.verbose, args.timeout
            )
        finally:
            if created is not None:
                pg_drop(args.pg_url, created)
        if code not in (0, 1):  # 1: tests failed; anything else: pytest itself did not finish
            problems.append(f"{backend}: pytest exited with status {code} (see its output)")
        expected = expected_for(entries, backend, version)
        problems += report(backend, version, outcomes, expected, not args.pytest_args)
        for nodeid, result in outcomes.items():
            if result["outcome"] == "failed":
                failures.setdefault(normalize(nodeid), {})[backend] = result["reason"]
        counted = [r for r in outcomes.values() if r["outcome"] != "skipped"]
        passed = sum(r["outcome"] == "passed" for r in counted)
        summary.append(
            f"{backend}: {passed} passed, {len(counted) - passed} failed of {len(counted)}"
        )

    if args.update_expected:
        write_expected(args.expected, version, backends, failures, entries)
        log(f"rewrote {args.expected} from this run")
    print()
    print(f"SQLAlchemy {version} conformance of async_orm:")
    for line in summary:
        print(f"  {line}")
    if problems:
        print()
        for problem in problems:
            print(problem)
        log(f"kept {workdir} (pytest output: pytest-<backend>.log there)")
        return 1
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
