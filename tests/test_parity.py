"""API parity with ``sqlalchemy.ext.asyncio``, checked by introspection.

Code written for ``sqlalchemy.ext.asyncio`` must keep working after changing
the import to ``async_orm``.  These tests introspect the *installed*
SQLAlchemy's ``sqlalchemy.ext.asyncio`` (the package and its submodules
``engine``, ``session``, ``result``, ``scoping`` and ``exc``: every public
name, every public class's public methods and attributes, and the protocol
dunders ``__init__``, ``__call__``, ``__aenter__``, ``__aexit__``,
``__await__``, ``__aiter__``, ``__anext__``, ``__iter__``, ``__contains__``)
and compare names, kinds, async-ness, settable attributes, base classes, and
parameter names, kinds and defaults with async_orm's.

SQLAlchemy 2.1 refuses ``import sqlalchemy.ext.asyncio`` without greenlet,
and the test environment has no greenlet on purpose (the suite proves
async_orm never needs it).  So the reference is introspected in a
subprocess whose ``PYTHONPATH`` holds a directory containing only greenlet
(``$ASYNC_ORM_GREENLET_DIR`` if set, else one built with ``pip install
--target`` in the pytest cache); async_orm is introspected in-process, by the
very same function.

Intentional differences live in the allow-list just below, each with its
reason; a test fails when an entry no longer matches a real difference.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import exc as sa_exc

import async_orm

# ---------------------------------------------------------------------------
# The allow-list: every intentional difference, with its reason.

#: Names of ``sqlalchemy.ext.asyncio`` (module key, name) that async_orm does not mirror.
NOT_MIRRORED: dict[tuple[str, str], str] = {}

#: Parameters async_orm accepts beyond the reference's.  Each must be optional
#: (a default, or **kw-style keyword-only with a default) so that every call
#: written for sqlalchemy.ext.asyncio still works.
EXTRA_PARAMETERS: dict[str, tuple[frozenset[str], str]] = {
    "engine.AsyncEngine.__init__": (
        frozenset({"max_workers", "worker_timeout"}),
        "AsyncEngine(sync_engine) wraps an engine the application already has, so it takes "
        "the worker-slot settings create_async_engine() takes (keyword-only, optional).",
    ),
    "result.AsyncResult.__init__": (
        frozenset({"_runner"}),
        "a streaming result must know the worker thread that owns its cursor; private and "
        "optional (an AsyncResult built without it refuses I/O with a clear error).",
    ),
}

#: async_orm's own public names (design.md, "What this library adds").
ADDITIONS: dict[tuple[str, str], str] = {
    ("engine", "ThreadSafeAsyncAdaptedQueuePool"): (
        "the AsyncAdaptedQueuePool of an async_orm engine (its default pool), with QueuePool's "
        "thread-safe queue; poolclass=AsyncAdaptedQueuePool becomes it."
    ),
    ("", "allow_loop_io"): (
        "the documented opt-out of the event-loop I/O guard (design invariant 3)."
    ),
    ("", "install_as_sqlalchemy_asyncio"): (
        "the opt-in stand-in that makes 'import sqlalchemy.ext.asyncio' resolve to "
        "async_orm, for libraries built for SQLAlchemy's asyncio extension."
    ),
    ("", "create_task_in_loop"): (
        "asyncio.create_task() for listeners, which run on the worker thread."
    ),
    ("", "configure"): ("process-wide settings of the thread boundary (thread placement)."),
    ("", "call_soon_in_loop"): ("loop.call_soon() for listeners, which run on the worker thread."),
}
#: In ``exc``, the library's own errors are additions too (issue 3, item 5), as
#: long as they are SQLAlchemy errors that existing ``except`` clauses catch.
ADDITION_RULE_EXC = "async_orm.exc: the library's own SQLAlchemyError subclasses"

# ---------------------------------------------------------------------------

# the first test builds the greenlet directory (a pip install) and the reference dump
pytestmark = pytest.mark.timeout(240)

IN_CI = os.environ.get("CI", "").lower() == "true"
SA_VERSION = sqlalchemy.__version__


def _introspect_api(package: str, engine_url: str) -> dict[str, Any]:
    """Describe the public API of ``package`` (sqlalchemy.ext.asyncio or async_orm)
    as JSON-able data.  Self-contained: its source is also run in a subprocess."""
    import importlib
    import inspect
    import re
    import types
    import typing

    submodules = ("engine", "session", "result", "scoping", "exc")
    dunders = {
        "__init__",
        "__call__",
        "__aenter__",
        "__aexit__",
        "__await__",
        "__aiter__",
        "__anext__",
        "__iter__",
        "__contains__",
    }
    skip_owners = (object, typing.Generic)

    def norm_default(value: Any) -> str:
        if value is inspect.Parameter.empty:
            return "<required>"
        if isinstance(value, type):
            return "class " + value.__qualname__
        if callable(value) and hasattr(value, "__qualname__"):
            return "callable " + value.__qualname__
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))

    def signature(func: Any) -> list[list[str]] | None:
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return None
        return [[p.name, p.kind.name, norm_default(p.default)] for p in sig.parameters.values()]

    def asyncness(func: Any) -> str:
        if inspect.isasyncgenfunction(func):
            return "asyncgen"
        if inspect.iscoroutinefunction(func):
            return "coroutine"
        return "sync"

    def describe_callable(kind: str, func: Any) -> dict[str, Any]:
        return {"kind": kind, "async": asyncness(func), "signature": signature(func)}

    def describe_member(raw: Any) -> dict[str, Any]:
        if isinstance(raw, classmethod):
            return describe_callable("classmethod", raw.__func__)
        if isinstance(raw, staticmethod):
            return describe_callable("staticmethod", raw.__func__)
        if isinstance(raw, (types.FunctionType, types.BuiltinFunctionType)):
            return describe_callable("method", raw)
        if isinstance(raw, property):
            return {"kind": "attribute", "settable": raw.fset is not None}
        if isinstance(raw, type):
            return {"kind": "attribute", "settable": None}
        if hasattr(type(raw), "__get__"):  # slots, memoized properties, ...
            return {"kind": "attribute", "settable": hasattr(type(raw), "__set__")}
        if callable(raw):
            return describe_callable("method", raw)
        return {"kind": "attribute", "settable": None}

    def is_public(name: str) -> bool:
        return not name.startswith("_") or name in dunders

    def bases(cls: type) -> list[str]:
        return sorted(
            f"{k.__module__}:{k.__qualname__}"
            for k in cls.__mro__
            if not (k.__module__ == package or k.__module__.startswith(package + "."))
            and k not in skip_owners
            and k.__module__ not in ("typing", "builtins", "abc")
        )

    def describe_class(cls: type, instance: Any) -> dict[str, Any]:
        members: dict[str, Any] = {}
        for name in dir(cls):
            if not is_public(name):
                continue
            owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
            if owner is None or owner in skip_owners:
                continue
            members[name] = describe_member(owner.__dict__[name])
        # instance attributes set in __init__ (AsyncSession.sync_session, ...)
        for name in getattr(instance, "__dict__", {}):
            if not name.startswith("_") and name not in members:
                members[name] = {"kind": "attribute", "settable": True}
        # public classes of the package itself that it derives from (AsyncConnectable, ...)
        own = sorted(
            f"{k.__module__[len(package) + 1 :]}.{k.__name__}"
            for k in cls.__mro__[1:]
            if k.__module__.startswith(package + ".")
            and not k.__name__.startswith("_")
            and k.__module__ != package + ".base"
        )
        return {"bases": bases(cls), "own_bases": own, "members": members}

    def kind_of(obj: Any) -> str:
        if isinstance(obj, types.ModuleType):
            return "module"
        if isinstance(obj, type):
            return "class"
        if callable(obj):
            return "function"
        return "other"

    root = importlib.import_module(package)
    modules = {"": root}
    for sub in submodules:
        modules[sub] = importlib.import_module(f"{package}.{sub}")

    api: dict[str, Any] = {
        "modules": {},
        "namespaces": {},
        "classes": {},
        "functions": {},
        "notes": [],
    }

    # instances reveal the attributes __init__ sets; the engine never connects
    instances: dict[str, Any] = {}
    try:
        engine: Any = root.create_async_engine(engine_url)
    except Exception as error:  # no psycopg: instances without a bind
        api["notes"].append(f"no engine for sample instances: {error!r}")
        engine = None
    try:
        maker = root.async_sessionmaker(engine)
        instances["AsyncSession"] = root.AsyncSession(engine)
        instances["async_sessionmaker"] = maker
        instances["async_scoped_session"] = root.async_scoped_session(maker, scopefunc=lambda: 0)
    except Exception as error:
        api["notes"].append(f"sample instances failed: {error!r}")

    for key, mod in modules.items():
        names: dict[str, Any] = {}
        declared = getattr(mod, "__all__", None)
        for name, obj in vars(mod).items():
            if name.startswith("_"):
                continue
            kind = kind_of(obj)
            if declared is not None:
                if name not in declared and not (key == "" and kind == "module"):
                    continue  # a module with __all__ declares its public names
            elif key and (
                kind not in ("class", "function")
                or getattr(obj, "__module__", None) != mod.__name__
            ):
                continue  # a submodule's own classes and functions, not its imports
            home = getattr(obj, "__module__", None) if kind in ("class", "function") else None
            if home == package or (home or "").startswith(package + "."):
                home = home[len(package) + 1 :]  # type: ignore[index]
            else:
                home = None
            names[name] = {"kind": kind, "home": home}
            if home is not None and kind == "class":
                api["classes"].setdefault(
                    f"{home}.{name}", describe_class(obj, instances.get(name))
                )
            elif home is not None and kind == "function":
                api["functions"].setdefault(f"{home}.{name}", describe_callable("function", obj))
        api["modules"][key] = names
        api["namespaces"][key] = sorted(n for n in vars(mod) if not n.startswith("_"))
    return api


# ---------------------------------------------------------------------------
# fixtures: a greenlet-only directory, the reference dump, our dump


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _child_env(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def _greenlet_importable(directory: Path) -> bool:
    if not (directory / "greenlet").is_dir():
        return False
    probe = subprocess.run(
        [sys.executable, "-c", "import greenlet"],
        env=_child_env(str(directory)),
        capture_output=True,
        timeout=60,
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def greenlet_dir(request: pytest.FixtureRequest) -> Path:
    """A directory containing only greenlet, for the reference subprocess."""
    configured = os.environ.get("ASYNC_ORM_GREENLET_DIR")
    if configured:
        target = Path(configured).resolve()  # .ci/test passes a path relative to the repo
    else:
        tag = f"{sys.implementation.cache_tag}-{platform.machine()}"
        cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
        if cache is not None:
            target = Path(cache.mkdir(f"async_orm-greenlet-{tag}"))
        else:
            target = Path(tempfile.gettempdir()) / f"async_orm-greenlet-{tag}"
    if _greenlet_importable(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            installed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--retries",
                    "1",
                    "--timeout",
                    "15",
                    "--target",
                    tmp,
                    "greenlet",
                ],
                env=_child_env(None),
                capture_output=True,
                text=True,
                timeout=150,
            )
        except subprocess.TimeoutExpired:
            _unavailable("pip install greenlet timed out (offline?)")
        if installed.returncode != 0:
            _unavailable(
                "cannot build the greenlet directory needed to import sqlalchemy.ext.asyncio "
                f"(pip install --target failed, offline?): {installed.stderr.strip()[-500:]}"
            )
        for entry in Path(tmp).iterdir():
            destination = target / entry.name
            if destination.exists():
                shutil.rmtree(destination, ignore_errors=True)
            shutil.move(str(entry), str(destination))
    if not _greenlet_importable(target):
        _unavailable(f"greenlet installed into {target} but cannot be imported")
    return target


_REFERENCE_URL = "postgresql+psycopg_async://parity@127.0.0.1:1/parity"
_OUR_URL = "postgresql+psycopg://parity@127.0.0.1:1/parity"


@pytest.fixture(scope="session")
def reference_api(greenlet_dir: Path) -> dict[str, Any]:
    """The installed sqlalchemy.ext.asyncio, introspected in a subprocess."""
    script = (
        "from __future__ import annotations\nfrom typing import Any\n"
        + textwrap.dedent(inspect.getsource(_introspect_api))
        + "\nimport json, sys, sqlalchemy\n"
        + "api = _introspect_api('sqlalchemy.ext.asyncio', sys.argv[1])\n"
        + "print(json.dumps({'version': sqlalchemy.__version__, 'api': api}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, _REFERENCE_URL],
        env=_child_env(str(greenlet_dir)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"introspecting sqlalchemy.ext.asyncio failed:\n{done.stderr}"
    dump = json.loads(done.stdout.strip().splitlines()[-1])
    assert dump["version"] == SA_VERSION, (dump["version"], SA_VERSION)
    api: dict[str, Any] = dump["api"]
    assert not api["notes"], api["notes"]
    # a vacuous dump would make every comparison pass
    assert len(api["classes"]["session.AsyncSession"]["members"]) > 40
    return api


@pytest.fixture(scope="session")
def our_api() -> dict[str, Any]:
    api = _introspect_api("async_orm", _OUR_URL)
    assert not api["notes"], api["notes"]
    return api


# ---------------------------------------------------------------------------
# comparisons (each returns the list of differences, allow-list applied)


def _is_addition(module: str, name: str) -> bool:
    if (module, name) in ADDITIONS:
        return True
    if module == "exc":
        obj = getattr(async_orm.exc, name, None)
        return isinstance(obj, type) and issubclass(obj, sa_exc.SQLAlchemyError)
    return False


def _name_differences(ref: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    problems = []
    for module, names in ref["modules"].items():
        where = f"sqlalchemy.ext.asyncio{'.' + module if module else ''}"
        our_names = ours["modules"].get(module, {})
        for name, info in names.items():
            if (module, name) in NOT_MIRRORED:
                continue
            mine = our_names.get(name)
            if mine is None:
                problems.append(f"{where}.{name} ({info['kind']}) is missing from async_orm")
            elif mine["kind"] != info["kind"]:
                problems.append(
                    f"{where}.{name} is a {info['kind']}, async_orm's is a {mine['kind']}"
                )
            elif mine["home"] != info["home"]:
                problems.append(
                    f"{where}.{name} is defined in submodule {info['home']!r}, "
                    f"async_orm's in {mine['home']!r}"
                )
        reference_namespace = set(ref["namespaces"][module])
        for name, mine in our_names.items():
            if mine["kind"] == "module" and name not in names:
                continue  # extra submodules (scopes, asgi, ...) are not names of this package
            if name not in reference_namespace and not _is_addition(module, name):
                problems.append(
                    f"async_orm{'.' + module if module else ''}.{name} is public but "
                    f"{where} has no such name (not in ADDITIONS)"
                )
    return problems


def _member_differences(ref: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    problems = []
    for cls, info in ref["classes"].items():
        mine = ours["classes"].get(cls)
        if mine is None:
            if cls.split(".")[-1] not in ours["modules"].get(cls.split(".")[0], {}):
                continue  # reported as a missing name
            problems.append(f"{cls}: async_orm's is not defined in async_orm.{cls}")
            continue
        for name, member in info["members"].items():
            our_member = mine["members"].get(name)
            if our_member is None:
                problems.append(f"{cls}.{name} ({member['kind']}) is missing")
                continue
            if member["kind"] != our_member["kind"]:
                problems.append(
                    f"{cls}.{name} is a {member['kind']}, async_orm's is a {our_member['kind']}"
                )
                continue
            if member.get("async") != our_member.get("async"):
                problems.append(
                    f"{cls}.{name} is {member['async']}, async_orm's is {our_member['async']}"
                )
            if member.get("settable") is True and our_member.get("settable") is False:
                problems.append(f"{cls}.{name} can be set, async_orm's is read-only")
        for name, our_member in mine["members"].items():
            if name not in info["members"] and our_member["kind"] != "attribute":
                problems.append(
                    f"async_orm {cls}.{name} ({our_member['kind']}) is not in the reference"
                )
    return problems


def _signature_difference(key: str, ref_sig: Any, our_sig: Any) -> str | None:
    if ref_sig is None or our_sig is None:
        return None if ref_sig == our_sig else f"{key}: signature not introspectable"
    extra, _ = EXTRA_PARAMETERS.get(key, (frozenset(), ""))
    kept = []
    for name, kind, default in our_sig:
        if name in extra:
            if default == "<required>" and kind not in ("VAR_POSITIONAL", "VAR_KEYWORD"):
                return f"{key}: the allowed extra parameter {name!r} must be optional"
            continue
        kept.append([name, kind, default])
    if kept == ref_sig:
        return None

    def show(sig: list[list[str]]) -> str:
        parts = []
        for name, kind, default in sig:
            prefix = {"VAR_POSITIONAL": "*", "VAR_KEYWORD": "**"}.get(kind, "")
            tag = {"KEYWORD_ONLY": " (kw-only)", "POSITIONAL_ONLY": " (pos-only)"}.get(kind, "")
            value = "" if default == "<required>" else f"={default}"
            parts.append(f"{prefix}{name}{value}{tag}")
        return "(" + ", ".join(parts) + ")"

    return f"{key}: reference {show(ref_sig)} != async_orm {show(kept)}"


def _signature_differences(ref: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    problems = []
    for key, info in ref["functions"].items():
        mine = ours["functions"].get(key)
        if mine is None:
            continue  # reported as a missing name
        if info["async"] != mine["async"]:
            problems.append(f"{key} is {info['async']}, async_orm's is {mine['async']}")
        problem = _signature_difference(key, info["signature"], mine["signature"])
        if problem:
            problems.append(problem)
    for cls, info in ref["classes"].items():
        mine = ours["classes"].get(cls)
        if mine is None:
            continue
        for name, member in info["members"].items():
            our_member = mine["members"].get(name)
            if our_member is None or "signature" not in member or "signature" not in our_member:
                continue
            problem = _signature_difference(
                f"{cls}.{name}", member["signature"], our_member["signature"]
            )
            if problem:
                problems.append(problem)
    return problems


def _base_differences(ref: dict[str, Any]) -> list[str]:
    problems = []
    for cls, info in ref["classes"].items():
        module, name = cls.rsplit(".", 1)
        mine = getattr(importlib.import_module(f"async_orm.{module}"), name, None)
        if not isinstance(mine, type):
            continue  # reported as a missing name
        for base in info["bases"]:
            base_module, qualname = base.split(":")
            target: Any = importlib.import_module(base_module)
            for part in qualname.split("."):
                target = getattr(target, part)
            if not issubclass(mine, target):
                problems.append(f"async_orm.{cls} is not a subclass of {base_module}.{qualname}")
        for base in info["own_bases"]:
            base_module, base_name = base.rsplit(".", 1)
            ours = getattr(importlib.import_module(f"async_orm.{base_module}"), base_name, None)
            if not (isinstance(ours, type) and issubclass(mine, ours)):
                problems.append(f"async_orm.{cls} is not a subclass of async_orm.{base}")
    return problems


def _report(problems: list[str]) -> str:
    return f"{len(problems)} difference(s) from sqlalchemy {SA_VERSION}:\n  " + "\n  ".join(
        problems
    )


# ---------------------------------------------------------------------------
# the tests


def test_public_names_match_sqlalchemy_ext_asyncio(
    reference_api: dict[str, Any], our_api: dict[str, Any]
) -> None:
    problems = _name_differences(reference_api, our_api)
    assert not problems, _report(problems)


def test_class_members_match(reference_api: dict[str, Any], our_api: dict[str, Any]) -> None:
    problems = _member_differences(reference_api, our_api)
    assert not problems, _report(problems)


def test_signatures_match(reference_api: dict[str, Any], our_api: dict[str, Any]) -> None:
    problems = _signature_differences(reference_api, our_api)
    assert not problems, _report(problems)


def test_classes_have_the_reference_base_classes(reference_api: dict[str, Any]) -> None:
    """isinstance/except clauses written against SQLAlchemy's bases keep working."""
    problems = _base_differences(reference_api)
    assert not problems, _report(problems)


def test_allow_list_entries_are_all_still_needed(
    reference_api: dict[str, Any], our_api: dict[str, Any]
) -> None:
    """A stale allow-list entry would hide a future regression: each must match a
    real difference on this SQLAlchemy line (or be for the other line)."""
    stale = []
    for (module, name), _reason in NOT_MIRRORED.items():
        if name in our_api["modules"].get(module, {}):
            stale.append(f"NOT_MIRRORED {module}.{name}: async_orm has it now")
    for key, (extra, _reason) in EXTRA_PARAMETERS.items():
        cls, member = key.rsplit(".", 1)
        ours = our_api["classes"].get(cls, {}).get("members", {}).get(member)
        ref = reference_api["classes"].get(cls, {}).get("members", {}).get(member)
        if ours is None or ref is None:
            stale.append(f"EXTRA_PARAMETERS {key}: no such method on both sides")
            continue
        our_names = {p[0] for p in ours["signature"]}
        ref_names = {p[0] for p in ref["signature"]}
        if not extra <= our_names - ref_names:
            stale.append(f"EXTRA_PARAMETERS {key}: {sorted(extra)} are not all extra now")
    for (module, name), _reason in ADDITIONS.items():
        if name in reference_api["namespaces"][module] or name not in our_api["modules"].get(
            module, {}
        ):
            stale.append(f"ADDITIONS {module}.{name}: not an addition now")
    assert not stale, "\n".join(stale)


def test_public_submodules_export_the_same_objects() -> None:
    """``from sqlalchemy.ext.asyncio.session import X`` maps to ``from
    async_orm.session import X``, and the package re-exports the same objects."""
    from async_orm.engine import (
        AsyncConnection,
        AsyncEngine,
        AsyncTransaction,
        async_engine_from_config,
        create_async_engine,
        create_async_pool_from_url,
    )
    from async_orm.exc import (
        AsyncContextAlreadyStarted,
        AsyncContextNotStarted,
        AsyncMethodRequired,
    )
    from async_orm.result import (
        AsyncMappingResult,
        AsyncResult,
        AsyncScalarResult,
        AsyncTupleResult,
    )
    from async_orm.scoping import async_scoped_session
    from async_orm.session import (
        AsyncAttrs,
        AsyncSession,
        AsyncSessionTransaction,
        async_object_session,
        async_session,
        async_sessionmaker,
        close_all_sessions,
    )

    for obj in (
        AsyncConnection,
        AsyncEngine,
        AsyncTransaction,
        async_engine_from_config,
        create_async_engine,
        create_async_pool_from_url,
        AsyncMappingResult,
        AsyncResult,
        AsyncScalarResult,
        AsyncTupleResult,
        async_scoped_session,
        AsyncAttrs,
        AsyncSession,
        AsyncSessionTransaction,
        async_object_session,
        async_session,
        async_sessionmaker,
        close_all_sessions,
    ):
        assert getattr(async_orm, obj.__name__) is obj, obj
    for error in (AsyncContextAlreadyStarted, AsyncContextNotStarted, AsyncMethodRequired):
        assert getattr(async_orm.exc, error.__name__) is error
    for module in ("engine", "session", "result", "scoping", "exc"):
        submodule = importlib.import_module(f"async_orm.{module}")
        assert getattr(async_orm, module) is submodule
        for name in getattr(submodule, "__all__", ()):
            assert hasattr(submodule, name), f"async_orm.{module}.__all__ names missing {name}"


def test_dunder_all_is_exactly_the_exported_names() -> None:
    """``async_orm.__all__`` lists every public name of the package and nothing
    else (submodules other than ``exc`` are importable, not exported)."""
    exported = {
        name
        for name, value in vars(async_orm).items()
        if not name.startswith("_") and not (inspect.ismodule(value) and name != "exc")
    }
    assert sorted(async_orm.__all__) == sorted(exported)
    assert len(async_orm.__all__) == len(set(async_orm.__all__)), "duplicates in __all__"
    star: dict[str, Any] = {}
    exec("from async_orm import *", star)
    assert {n for n in star if not n.startswith("__")} == set(async_orm.__all__)


# ---------------------------------------------------------------------------
# greenlet stays out


_GREENLET_PROBE = r"""
import asyncio, importlib, json, pkgutil, sys

attempts = []


class Watch:
    # records who imports greenlet or sqlalchemy.ext.asyncio; imports nothing itself
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "greenlet" or name.startswith("sqlalchemy.ext.asyncio"):
            frame = sys._getframe(1)
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if not (
                    module.startswith("importlib")
                    or module.startswith("_frozen_importlib")
                    or frame.f_code.co_filename.startswith("<frozen")
                ):
                    break
                frame = frame.f_back
            attempts.append([name, frame.f_globals.get("__name__") if frame else None])
        return None


sys.meta_path.insert(0, Watch)

import async_orm

skipped = {"async_orm.__main__"}
failed = {}
for info in pkgutil.walk_packages(async_orm.__path__, "async_orm."):
    if info.name in skipped:
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as error:  # optional integrations (django, ...) without their extra
        failed[info.name] = repr(error)

from sqlalchemy import ForeignKey, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(async_orm.AsyncAttrs, DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    children: Mapped[list["Child"]] = relationship()


class Child(Base):
    __tablename__ = "child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("parent.id"))


async def main():
    engine = async_orm.create_async_engine("sqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_orm.async_sessionmaker(engine, expire_on_commit=False)
    async with maker.begin() as session:
        session.add(Parent(id=1, children=[Child(id=1), Child(id=2)]))
    async with maker() as session:
        parent = await session.get(Parent, 1)
        children = await parent.awaitable_attrs.children
        assert len(children) == 2
        streamed = [c async for c in await session.stream_scalars(select(Child))]
        assert len(streamed) == 2
        await session.run_sync(lambda s: s.execute(select(Child)).all())
    async with engine.connect() as conn:
        result = await conn.stream(select(Child.id))
        assert [r async for r in result] == [(1,), (2,)]
    await engine.dispose()


asyncio.run(main())
print(json.dumps({"attempts": attempts, "loaded": "greenlet" in sys.modules, "failed": failed}))
"""


def _run_greenlet_probe(pythonpath: str | None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _GREENLET_PROBE],
        env=_child_env(pythonpath),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 0, f"the workload failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _greenlet_importers(attempts: list[list[str]]) -> list[list[str]]:
    return [a for a in attempts if (a[1] or "").split(".")[0] == "async_orm"]


def test_no_async_orm_module_imports_greenlet() -> None:
    """Importing every module of async_orm and running a workload (ORM round
    trip, awaitable_attrs, streaming, run_sync) never imports greenlet nor
    sqlalchemy.ext.asyncio, in this greenlet-free environment."""
    if IN_CI:
        assert importlib.util.find_spec("greenlet") is None, (
            "CI must run the suite without greenlet installed, to prove async_orm works "
            "without it (SQLAlchemy 2.0 pulls it in: pip uninstall -y greenlet)"
        )
    probe = _run_greenlet_probe(None)
    assert _greenlet_importers(probe["attempts"]) == []
    if importlib.util.find_spec("greenlet") is None:
        assert probe["loaded"] is False


def test_greenlet_stays_unloaded_even_when_installed(greenlet_dir: Path) -> None:
    """With greenlet importable, the same workload still never loads it."""
    if SA_VERSION.startswith("2.0."):
        pytest.skip(
            "SQLAlchemy 2.0 itself imports greenlet at 'import sqlalchemy' whenever it is "
            "installed; the greenlet-free run (test_no_async_orm_module_imports_greenlet) "
            "covers 2.0"
        )
    probe = _run_greenlet_probe(str(greenlet_dir))
    assert _greenlet_importers(probe["attempts"]) == []
    assert probe["loaded"] is False
