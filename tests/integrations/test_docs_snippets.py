"""The code blocks of the quickstart, ASGI and Django pages run as written.

Every code block of those pages is preceded by a comment naming what it is::

    .. snippet: quickstart

    .. code-block:: python

and this file runs the blocks of each name (the blocks of one name, in page
order, make one file: the quickstart's program, the Django page's
``myapp/views.py``), or says why a block is not run
(``.. snippet: skip (shell commands)``).  A block without such a comment, a name
this file does not know, and a plain ``::`` literal block fail
:func:`test_every_code_block_is_run_or_marked_not_runnable`, so a new block
cannot go untested.

The only change made to a snippet before it runs is its database URL, replaced
by this test's database (SQLite, or a private PostgreSQL schema); the replaced
URL must appear exactly once, so a changed snippet cannot silently run against
nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import async_orm
from tests.conftest import PG_URL
from tests.integrations.conftest import assert_nothing_leaked

DOCS = Path(__file__).resolve().parents[2] / "docs"
SUBPROCESS_TIMEOUT = 120

#: For each page, the snippet names this file runs.
RUN = {
    "quickstart.rst": {"quickstart", "wrap-sync-engine"},
    "asgi.rst": {
        "models",
        "starlette",
        "fastapi",
        "commit-on",
        "several-databases",
        "nightly-job",
    },
    "django.rst": {
        "settings",
        "models",
        "views",
        "urls",
        "cleanup",
        "asgi",
        "pytest-config",
        "testing",
    },
}

_DIRECTIVE = re.compile(r"^(\s*)\.\. (code-block|code|sourcecode|literalinclude)::\s*(.*)$")
_MARKER = re.compile(r"^\s*\.\. snippet: (.*)$")
_SKIP = re.compile(r"^skip \((.+)\)$")
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass
class Block:
    page: str
    line: int
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def _body(lines: list[str], start: int, indent: int) -> tuple[str, int]:
    """The content of the directive or literal block whose body starts at
    ``start`` (options and the blank line after them dropped), and the index of
    the first line after it."""
    end = start
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    body = lines[start:end]
    while body and body[0].strip().startswith(":"):  # directive options
        body.pop(0)
    return textwrap.dedent("\n".join(body)).strip("\n") + "\n", end


def blocks(page: str) -> list[Block]:
    """Every code block of ``docs/<page>``, with the snippet comment before it."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        literal = not directive and line.rstrip().endswith("::") and ".. " not in line
        if not directive and not literal:
            index += 1
            continue
        previous = next((p for p in reversed(lines[:index]) if p.strip()), "")
        marker = _MARKER.match(previous)
        start = index
        code, index = _body(lines, index + 1, len(line) - len(line.lstrip()))
        found.append(
            Block(
                page,
                start + 1,
                code,
                # a plain '::' block is never accepted: the comment would sit
                # above its paragraph, far from the code
                None if literal else (marker.group(1).strip() if marker else None),
            )
        )
    return found


def snippet(page: str, name: str) -> str:
    """The blocks of ``page`` named ``name``, in page order, as one file."""
    codes = [block.code for block in blocks(page) if block.marker == name]
    assert codes, f"docs/{page} has no block marked '.. snippet: {name}'"
    return "\n\n".join(codes)


def with_url(code: str, old: str, new: str) -> str:
    """``code`` with its one database URL ``old`` replaced by ``new``."""
    count = code.count(f'"{old}"')
    assert count == 1, f"the snippet should name {old!r} exactly once, not {count} times"
    return code.replace(f'"{old}"', repr(new))


@pytest.mark.parametrize("page", sorted(RUN))
def test_every_code_block_is_run_or_marked_not_runnable(page: str) -> None:
    problems = []
    names = set()
    for block in blocks(page):
        if block.marker is None:
            problems.append(
                f"{block.where}: a code block without '.. snippet: <name>' or "
                "'.. snippet: skip (<reason>)' just before its '.. code-block::' "
                "(a plain '::' block needs an explicit '.. code-block::')"
            )
        elif _SKIP.match(block.marker):
            continue
        elif not _NAME.match(block.marker) or block.marker not in RUN[page]:
            problems.append(
                f"{block.where}: '.. snippet: {block.marker}' is not a snippet that "
                f"tests/integrations/test_docs_snippets.py runs for {page} "
                f"({', '.join(sorted(RUN[page]))}), nor 'skip (<reason>)'"
            )
        else:
            names.add(block.marker)
    problems += [
        f"docs/{page}: no block is marked '.. snippet: {name}'"
        for name in sorted(RUN[page] - names)
    ]
    assert not problems, "\n".join(problems)


# -- running them ----------------------------------------------------------------------


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL for this test's database: a SQLite file, or a private PostgreSQL schema."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'snippets.db'}"
    schema = request.getfixturevalue("pg_schema")
    return f"{PG_URL}?options=-csearch_path%3D{schema}&application_name={schema}"


def run_python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run Python in ``cwd`` with warnings as errors and a clean environment
    (no ``DJANGO_SETTINGS_MODULE``: a snippet that needs it must set it)."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH")
    }
    environ.update(env, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-W", "error", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def _collapse(text: str) -> str:
    return " ".join(text.split())


def expected_output(code: str) -> list[str]:
    """What the program's comments say it prints: the comment at the end of a
    ``print(...)`` line, or the comment lines right after one (which may wrap one
    long line, or be several lines of a loop); a trailing ``...`` means "and more"."""
    lines = code.splitlines()
    expected = []
    for index, line in enumerate(lines):
        if "print(" not in line:
            continue
        comment = line.partition("  # ")[2]
        if comment:
            expected.append(comment)
            continue
        following = []
        for after in lines[index + 1 :]:
            if not after.strip().startswith("# "):
                break
            following.append(after.strip()[2:])
        if following:
            expected.append(" ".join(following).removesuffix("...").strip())
    return expected


def test_quickstart_program_runs_and_prints_what_its_comments_say(
    database_url: str, tmp_path: Path
) -> None:
    code = with_url(
        snippet("quickstart.rst", "quickstart"), "sqlite:///quickstart.db", database_url
    )
    (tmp_path / "quickstart.py").write_text(code, encoding="utf-8")
    output = _collapse(run_python(["quickstart.py"], tmp_path).stdout)
    expected = expected_output(code)
    assert len(expected) >= 7, expected  # the parser found the comments
    position = 0
    for text in expected:
        found = output.find(_collapse(text), position)
        assert found >= 0, f"the quickstart should print {text!r} after {output[:position]!r}"
        position = found + len(_collapse(text))


def test_quickstart_wrapping_a_sync_engine_runs() -> None:
    namespace: dict[str, Any] = {}
    exec(
        compile(snippet("quickstart.rst", "wrap-sync-engine"), "wrap-sync-engine", "exec"),
        namespace,
    )
    try:
        assert isinstance(namespace["engine"], async_orm.AsyncEngine)
        assert namespace["engine"].sync_engine is namespace["sync_engine"]
        # the factory wraps the sync engine in its one AsyncEngine
        assert namespace["Session"].kw["bind"] is namespace["engine"]
    finally:
        namespace["sync_engine"].dispose()


# -- the ASGI page -----------------------------------------------------------------------


def load_module(name: str, code: str, directory: Path) -> ModuleType:
    """Write ``code`` to ``directory/<name as a path>.py`` and import it as ``name``."""
    path = directory.joinpath(*name.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def myapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``myapp.models`` from the ASGI page's ``models`` block, importable."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    try:
        yield load_module("myapp.models", snippet("asgi.rst", "models"), tmp_path)
    finally:
        for name in [name for name in sys.modules if name == "myapp" or name.startswith("myapp.")]:
            del sys.modules[name]


ASGI_PAGE_URL = "postgresql+psycopg://app@localhost/app"


async def load_asgi_example(
    name: str, myapp: ModuleType, database_url: str, tmp_path: Path
) -> ModuleType:
    """The page's Starlette or FastAPI block on this test's database, tables created."""
    code = with_url(snippet("asgi.rst", name), ASGI_PAGE_URL, database_url)
    module = load_module(f"myapp.{name}_app", code, tmp_path)
    async with module.engine.begin() as conn:
        await conn.run_sync(myapp.Base.metadata.create_all)
    return module


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def user_names(engine: async_orm.AsyncEngine, myapp: ModuleType) -> list[str]:
    async with async_orm.AsyncSession(engine) as session:
        return list((await session.scalars(select(myapp.User.name).order_by(myapp.User.id))).all())


@pytest.fixture
async def starlette_example(
    myapp: ModuleType, database_url: str, tmp_path: Path
) -> AsyncIterator[ModuleType]:
    module = await load_asgi_example("starlette", myapp, database_url, tmp_path)
    yield module
    assert_nothing_leaked(module.engine)
    await module.engine.dispose()


async def test_asgi_starlette_example_serves_and_commits(
    starlette_example: ModuleType, myapp: ModuleType
) -> None:
    async with client_for(starlette_example.app) as client:
        created = await client.post("/users", json={"name": "ann"})
        assert created.status_code == 201, created.text
        listed = await client.get("/users")
    assert listed.json() == [{"id": created.json()["id"], "name": "ann"}]
    assert await user_names(starlette_example.engine, myapp) == ["ann"]


async def test_asgi_fastapi_example_takes_a_json_body(
    myapp: ModuleType, database_url: str, tmp_path: Path
) -> None:
    module = await load_asgi_example("fastapi", myapp, database_url, tmp_path)
    try:
        async with client_for(module.app) as client:
            created = await client.post("/users", json={"name": "bob"})
            assert created.status_code == 201, created.text
            user = created.json()
            assert user["name"] == "bob"
            assert (await client.get(f"/users/{user['id']}")).json() == user
            assert (await client.get(f"/users/{user['id'] + 1}")).status_code == 404
            # the name is the JSON body, not a query parameter
            assert (await client.post("/users", params={"name": "eve"})).status_code == 422
        assert await user_names(module.engine, myapp) == ["bob"]
        assert_nothing_leaked(module.engine)
    finally:
        await module.engine.dispose()


def run_fragment(page: str, name: str, example: ModuleType) -> dict[str, Any]:
    """A block that continues an example (uses its ``app`` and ``Session``), run in
    a copy of that example's namespace."""
    namespace = dict(vars(example))
    exec(compile(snippet(page, name), f"docs/{page}:{name}", "exec"), namespace)
    return namespace


async def test_asgi_commit_on_choices_run(
    starlette_example: ModuleType, myapp: ModuleType
) -> None:
    run_fragment("asgi.rst", "commit-on", starlette_example)
    async with client_for(starlette_example.app) as client:
        assert (await client.post("/users", json={"name": "cyd"})).status_code == 201
    assert await user_names(starlette_example.engine, myapp) == ["cyd"]


async def test_asgi_several_databases_runs(starlette_example: ModuleType) -> None:
    namespace = run_fragment("asgi.rst", "several-databases", starlette_example)
    try:
        async with client_for(starlette_example.app) as client:
            assert (await client.get("/users")).json() == []
        assert namespace["Users"].registry.registry == {}
    finally:
        await namespace["users_engine"].dispose()
        await namespace["billing_engine"].dispose()


async def test_asgi_background_job_scope_runs(starlette_example: ModuleType) -> None:
    namespace = run_fragment("asgi.rst", "nightly-job", starlette_example)
    await namespace["nightly_job"]()
    assert starlette_example.Session.registry.registry == {}


# -- the Django page ---------------------------------------------------------------------

#: What ``django-admin startproject`` writes around the page's settings block
#: (less the contrib apps and their middleware, which the page does not use).
DJANGO_SETTINGS = """\
import os

SECRET_KEY = "docs-snippet-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
INSTALLED_APPS = []
DATABASES = {{}}
ROOT_URLCONF = "myproject.urls"

# -- docs/django.rst, "Settings" ------------------------------------------------------
{settings}
# -- around it: Django's own middleware first (CSRF included), this test's database --
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    *MIDDLEWARE,
]
ASYNC_ORM_DATABASES["default"]["URL"] = os.environ["SNIPPET_DATABASE_URL"]
"""

#: Serves the project through the page's ``myproject/asgi.py`` (lifespan included)
#: and prints what it saw as JSON.
DJANGO_DRIVER = """\
import asyncio
import json

import httpx
from sqlalchemy import update

import myproject.asgi
from async_orm import AsyncSession
from async_orm.django import get_engine
from myapp.jobs import nightly_cleanup
from myapp.models import Article, Base


async def main():
    app = myproject.asgi.application
    engine = get_engine()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    incoming, outgoing = asyncio.Queue(), asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, incoming.get, outgoing.put)
    )
    await incoming.put({"type": "lifespan.startup"})
    seen = {"startup": (await outgoing.get())["type"]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post("/articles/", json={"title": "first"})
        seen["post"] = [response.status_code, response.json()]
        response = await client.post("/import/", content="second\\nthird")
        seen["import"] = [response.status_code, response.json()]
        seen["csrf_checked"] = (await client.post("/stats/")).status_code
        seen["list"] = (await client.get("/articles/")).json()
        seen["stats"] = (await client.get("/stats/")).json()
        async with AsyncSession(engine) as session:
            await session.execute(update(Article).where(Article.id == 1).values(archived=True))
            await session.commit()
        seen["dashboard"] = (await client.get("/dashboard/")).json()
        await nightly_cleanup()
        seen["after_cleanup"] = (await client.get("/articles/")).json()
    pool = engine.sync_engine.pool
    seen["checked_out"] = pool.checkedout()
    await incoming.put({"type": "lifespan.shutdown"})
    seen["shutdown"] = (await outgoing.get())["type"]
    await lifespan
    seen["pool_replaced"] = engine.sync_engine.pool is not pool
    print(json.dumps(seen))


asyncio.run(main())
"""


@pytest.fixture
def django_project(tmp_path: Path) -> Path:
    """A project made of the Django page's blocks, in ``tmp_path``."""
    files = {
        "myapp/__init__.py": "",
        "myapp/models.py": snippet("django.rst", "models"),
        "myapp/views.py": snippet("django.rst", "views"),
        "myapp/jobs.py": snippet("django.rst", "cleanup"),
        "myproject/__init__.py": "",
        "myproject/settings.py": DJANGO_SETTINGS.format(
            settings=snippet("django.rst", "settings")
        ),
        "myproject/urls.py": snippet("django.rst", "urls"),
        "myproject/asgi.py": snippet("django.rst", "asgi"),
        "pyproject.toml": snippet("django.rst", "pytest-config"),
        "tests/test_articles.py": snippet("django.rst", "testing"),
        "drive.py": DJANGO_DRIVER,
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_django_page_project_serves_through_its_asgi_py(
    django_project: Path, database_url: str
) -> None:
    """``myproject/asgi.py`` sets ``DJANGO_SETTINGS_MODULE`` itself (the environment
    has none); the POST views pass Django's CSRF middleware; the sync views, the
    async view calling a sync helper and the background job work; the lifespan
    shutdown disposes of the engine."""
    result = run_python(["drive.py"], django_project, SNIPPET_DATABASE_URL=database_url)
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen.pop("startup") == "lifespan.startup.complete"
    assert seen.pop("shutdown") == "lifespan.shutdown.complete"
    assert seen == {
        "post": [201, {"id": 1}],
        "import": [201, {"imported": 2}],
        "csrf_checked": 403,  # a view without csrf_exempt still gets the check
        "list": [
            {"id": 1, "title": "first"},
            {"id": 2, "title": "second"},
            {"id": 3, "title": "third"},
        ],
        "stats": {"current": 3, "archived": 0},
        "dashboard": {"articles": {"current": 2, "archived": 1}},
        "after_cleanup": [{"id": 2, "title": "second"}, {"id": 3, "title": "third"}],
        "checked_out": 0,
        "pool_replaced": True,
    }


def test_django_page_test_module_passes(django_project: Path, tmp_path: Path) -> None:
    """The page's pytest example, run with its pytest configuration (the test
    points the settings at a SQLite file of its own)."""
    result = run_python(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider"],
        django_project,
        SNIPPET_DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}",
    )
    assert "1 passed" in result.stdout, result.stdout
