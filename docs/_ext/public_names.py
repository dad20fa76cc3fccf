"""Public spellings in rendered signatures, and links for SQLAlchemy's names.

async_orm's annotations mirror ``sqlalchemy.ext.asyncio``'s, which use SQLAlchemy's
private type aliases (``_CoreAnyExecuteParams``, ``_EntityBindKey[_O]``), private
defaults (``util.EMPTY_DICT``) and private parameters (``_warn``).  Rendered as
written, a signature shows names a reader cannot look up.  This extension

* rewrites each signature (``autodoc-process-signature``) with what those names
  stand for, spelled with public names: ``_CoreAnyExecuteParams`` becomes
  ``Mapping[str, Any] | Sequence[Mapping[str, Any]]``; drops parameters whose name
  starts with ``_``; shows type variables without their underscore (``_T`` -> ``T``);
* resolves the names the annotations use unqualified or by their defining module
  (``Session``, ``sqlalchemy.engine.base.Engine``) to the name SQLAlchemy's
  documentation gives them (``sqlalchemy.orm.Session``, ``sqlalchemy.engine.Engine``),
  through the SQLAlchemy intersphinx inventory (``missing-reference``);
* renders references to the type variables as plain text: a type variable has no
  page to link to.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.directives import ObjectDescription
from sphinx.domains.python import PythonDomain
from sphinx.environment import BuildEnvironment
from sphinx.ext.intersphinx import InventoryAdapter, resolve_reference_in_inventory
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)

#: Private aliases and what they stand for.  ``{0}`` is the alias's subscript:
#: ``_EntityBindKey[_O]`` -> ``type[_O] | Mapper[_O]``.  Names in the spellings are
#: qualified by ``QUALIFIED`` below.
ALIASES: dict[str, str] = {
    # sqlalchemy.engine.interfaces
    "_CoreSingleExecuteParams": "Mapping[str, Any]",
    "_CoreAnyExecuteParams": "Mapping[str, Any] | Sequence[Mapping[str, Any]]",
    "_DBAPIAnyExecuteParams": (
        "Sequence[Any] | Mapping[str, Any] | Sequence[Sequence[Any] | Mapping[str, Any]]"
    ),
    "CoreExecuteOptionsParameter": "Mapping[str, Any]",
    "_ExecuteOptions": "Mapping[str, Any]",  # an immutabledict, which SQLAlchemy does not document
    "IsolationLevel": "str",
    # sqlalchemy.pool.base
    "_CreatorFnType": "Callable[[], Any]",
    "_CreatorWRecFnType": "Callable[[Any], Any]",
    # sqlalchemy.orm
    "OrmExecuteOptionsParameter": "Mapping[str, Any]",
    "_BindArguments": "dict[str, Any]",
    "_PKIdentityArgument": "Any | tuple[Any, ...]",
    "_EntityBindKey": "type[{0}] | Mapper[{0}]",
    "_SessionBindKey": "type[Any] | Mapper[Any] | Table | str",
    "ForUpdateParameter": "bool | dict[str, Any] | None",
    # sqlalchemy.engine.result
    "_KeyIndexType": "str | int | Column[Any]",
    "_UniqueFilterType": "Callable[[Any], Any]",
    # sqlalchemy.util.typing
    "TupleAny": "tuple[Any, ...]",
    "typing_extensions.Unpack": "Unpack",
    # sqlalchemy.ext.asyncio.session (async_orm has the same aliases)
    "_AsyncSessionBind": "AsyncEngine | AsyncConnection",
    "_AsyncSessionContextManager": "AbstractAsyncContextManager[{0}]",
    # async_orm.engine: what stream() returns, awaitable (and an async context manager)
    "_ResultContext": "Awaitable[{0}]",
    # asyncio.Task is defined in the C module _asyncio
    "_asyncio.Task": "Task",
    # documented under their public modules
    "concurrent.futures._base.Future": "concurrent.futures.Future",
    "asyncio.events.Handle": "asyncio.Handle",
    # defaults
    "util.EMPTY_DICT": "{{}}",
    # worker_timeout not given: the pool's own pool_timeout applies
    "_worker._UNSET": "<pool_timeout>",
}

#: The documented objects that the names in ``ALIASES``' spellings stand for.
QUALIFIED = {
    "Any": "~typing.Any",
    "Unpack": "~typing.Unpack",
    "Mapping": "~collections.abc.Mapping",
    "Sequence": "~collections.abc.Sequence",
    "Callable": "~collections.abc.Callable",
    "Awaitable": "~collections.abc.Awaitable",
    "AbstractAsyncContextManager": "~contextlib.AbstractAsyncContextManager",
    "Task": "~asyncio.Task",
    "Mapper": "~sqlalchemy.orm.Mapper",
    "Table": "~sqlalchemy.schema.Table",
    "Column": "~sqlalchemy.schema.Column",
    "AsyncEngine": "~async_orm.AsyncEngine",
    "AsyncConnection": "~async_orm.AsyncConnection",
}


def _qualify(spelling: str) -> str:
    return re.sub(
        r"(?<![\w.~])[A-Za-z]\w*",
        lambda match: QUALIFIED.get(match.group(), match.group()),
        spelling,
    )


#: Type variables of async_orm and SQLAlchemy, shown without their underscore.
TYPEVARS = {"_T", "_O", "_Ts", "_P", "_R", "_AS", "_V", "_T_co"}

#: Preferred documented names where the SQLAlchemy inventory has several objects of
#: that name (a bare ``Result`` in a signature is the engine's ``Result``).
PREFERRED = {
    "Executable": "sqlalchemy.sql.expression.Executable",
    "ClauseElement": "sqlalchemy.sql.expression.ClauseElement",
    "Result": "sqlalchemy.engine.Result",
    "ScalarResult": "sqlalchemy.engine.ScalarResult",
    "Row": "sqlalchemy.engine.Row",
    "RowMapping": "sqlalchemy.engine.RowMapping",
    "Session": "sqlalchemy.orm.Session",
    "Connection": "sqlalchemy.engine.Connection",
    "Engine": "sqlalchemy.engine.Engine",
    "Transaction": "sqlalchemy.engine.Transaction",
    "URL": "sqlalchemy.engine.URL",
}


#: Modules SQLAlchemy's docs describe on a page without declaring them
#: (``:mod:`sqlalchemy.ext.asyncio``` links to that page).
MODULE_PAGES = {
    "sqlalchemy.ext.asyncio": "orm/extensions/asyncio",
    "sqlalchemy.ext.asyncio.exc": "orm/extensions/asyncio",
}


def _qualified(name: str) -> str:
    """A regex for ``name`` as a whole identifier, optionally ``~`` and module-qualified."""
    return r"(?<![\w.~])~?(?:[A-Za-z_]\w*\.)*" + re.escape(name) + r"(?![\w])"


def _subscript_end(text: str, start: int) -> int:
    """Index just past the ``]`` matching the ``[`` at ``text[start]``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "[":
            depth += 1
        elif text[index] == "]":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _replace_alias(text: str, name: str, spelling: str) -> str:
    pattern = re.compile(_qualified(name))
    out: list[str] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() < position:
            continue
        out.append(text[position : match.start()])
        position = match.end()
        if "{0}" in spelling and position < len(text) and text[position] == "[":
            end = _subscript_end(text, position)
            out.append(spelling.format(text[position + 1 : end - 1]))
            position = end
        else:
            out.append(spelling.format("Any"))
    out.append(text[position:])
    return "".join(out)


def public_annotation(text: str, defaults: dict[str, str] | None = None) -> str:
    """``text`` (a signature or an annotation) with public names only."""
    for name in sorted(TYPEVARS, key=len, reverse=True):
        # ParamSpec annotations as autodoc stringifies them: ``~typing.~_P``
        text = text.replace(f"~typing.~{name}", name)
        text = re.sub(_qualified(name), name.lstrip("_"), text)
    # ``*arg: P.args, **kw: P.kwargs`` (autodoc shows them as ``*arg: P``)
    text = re.sub(r"\*\*(\w+): P(?=[,)])", r"**\1: P.kwargs", text)
    text = re.sub(r"(?<![*\w])\*(\w+): P(?=[,)])", r"*\1: P.args", text)
    # autodoc renders ``Callable[Concatenate[S, P], T]`` as ``Callable[[Concatenate[S, P]], T]``
    text = re.sub(r"Callable\[\[(~?[\w.]*Concatenate\[[^\[\]]*\])\]", r"Callable[\1", text)
    for name, spelling in ALIASES.items():
        text = _replace_alias(text, name, _qualify(spelling))
    for name, value in (defaults or {}).items():
        text = re.sub(rf"= {re.escape(name)}(?=[,)])", f"= {value}", text)
    return text


def _closing(text: str, start: int) -> int:
    """Index of the ``)`` matching the ``(`` at ``text[start]``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] in "([{":
            depth += 1
        elif text[index] in ")]}":
            depth -= 1
            if depth == 0:
                return index
    return len(text) - 1


def _split_parameters(inner: str) -> list[str]:
    """The top-level, comma-separated parameters of ``a, b: dict[str, int] = {}, *``."""
    parameters: list[str] = []
    depth = 0
    current = ""
    quote = ""
    for char in inner:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parameters.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parameters.append(current.strip())
    return parameters


def public_signature(signature: str, defaults: dict[str, str]) -> str:
    """``name(params) -> annotation`` with public names only, and without the
    parameters whose name starts with ``_``."""
    signature = public_annotation(signature, defaults)
    start = signature.find("(")
    if start < 0:
        return signature
    end = _closing(signature, start)
    parameters = [
        parameter
        for parameter in _split_parameters(signature[start + 1 : end])
        if not re.match(r"_\w", parameter.lstrip("*"))
    ]
    if parameters and parameters[-1] == "*":
        parameters.pop()
    return signature[: start + 1] + ", ".join(parameters) + signature[end:]


#: A private name (``_Foo``, ``util._bar``) left in a signature after rewriting.
PRIVATE_NAME = re.compile(r"(?<![\w'\"])_[A-Za-z]\w*")


class _PublicNames(ObjectDescription[Any]):
    """Mixin for the ``py:`` object directives: public names in the signature
    and in the ``:type:`` of attributes and properties, and a warning (an error
    under ``-W``) for a private name that is still there."""

    def _checked(self, text: str) -> str:
        # as rendered: ``~a._b.C`` shows as ``C``
        private = PRIVATE_NAME.findall(re.sub(r"~(?:\w+\.)+", "", text))
        if private:
            LOGGER.warning(
                "private name %s in the signature %r: add what it stands for to "
                "ALIASES in docs/_ext/public_names.py",
                ", ".join(sorted(set(private))),
                text,
                location=self.get_location(),
                type="public_names",
            )
        return text

    def get_signatures(self) -> list[str]:
        defaults = self.config.public_names_defaults
        return [self._checked(public_signature(sig, defaults)) for sig in super().get_signatures()]

    def run(self) -> list[nodes.Node]:
        if self.options.get("type"):
            self.options["type"] = self._checked(public_annotation(self.options["type"]))
        return super().run()


def _sqlalchemy_name(env: BuildEnvironment, reftype: str, target: str) -> str | None:
    """The name under which SQLAlchemy's docs document ``target`` (``Session``,
    ``Session.get``, ``sqlalchemy.engine.base.Engine``), if there is one."""
    inventory = InventoryAdapter(env).named_inventory.get("sqlalchemy")
    if not inventory:
        return None
    if target.startswith("sqlalchemy."):
        # defining module -> documented name: keep the class (and member) part
        parts = target.split(".")
        classes = [i for i, part in enumerate(parts) if part[:1].isupper()]
        if not classes:
            return None
        target = ".".join(parts[classes[0] :])
    head, _, tail = target.partition(".")
    if head in PREFERRED:
        return PREFERRED[head] + (f".{tail}" if tail else "")
    suffix = "." + target
    objtypes = {
        "class": ("py:class", "py:exception", "py:data", "py:function"),
        "exc": ("py:exception", "py:class"),
        "meth": ("py:method", "py:function"),
        "attr": ("py:attribute", "py:property"),
        "func": ("py:function",),
        "data": ("py:data", "py:attribute"),
        "obj": ("py:class", "py:function", "py:data", "py:attribute", "py:method"),
    }.get(reftype, ())
    found = {
        name
        for objtype in objtypes
        for name in inventory.get(objtype, {})
        if name.endswith(suffix) and name.startswith("sqlalchemy.")
    }
    # SQLAlchemy documents some classes under their defining module too
    # (``sqlalchemy.sql.base.Executable`` and ``sqlalchemy.sql.expression.Executable``):
    # the shorter, public name is the one to link.
    shortest = sorted(found, key=lambda name: (name.count("."), name))
    if len(shortest) > 1 and shortest[0].count(".") == shortest[1].count("."):
        return None
    return shortest[0] if shortest else None


def _inventory_uri(env: BuildEnvironment, inventory: str, objtype: str, name: str) -> str | None:
    entry = InventoryAdapter(env).named_inventory.get(inventory, {}).get(objtype, {}).get(name)
    if entry is None:
        return None
    # an _InventoryItem (Sphinx 8.2+) or a (project, version, uri, display name) tuple
    return str(entry.uri if hasattr(entry, "uri") else entry[2])


def missing_reference(
    app: Sphinx, env: BuildEnvironment, node: nodes.Element, contnode: nodes.TextElement
) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"]
    reftype: str = node["reftype"]
    head = target.split(".")[0]
    if target in {name.lstrip("_") for name in TYPEVARS} or head == "P":
        return contnode
    if reftype == "mod" and target in MODULE_PAGES:
        uri = _inventory_uri(env, "sqlalchemy", "std:doc", MODULE_PAGES[target])
        if uri is not None:
            return nodes.reference("", "", contnode, internal=False, refuri=uri)
    if head == "async_orm" or head in _async_orm_names():
        # A bare public name (``AsyncSession``) from a submodule's docstring, or an
        # alias documented as data (``async_orm.asgi.ASGIApp``) in an annotation,
        # which the ``class`` role finds only on Sphinx 9 and later: any object type.
        full = target if head == "async_orm" else f"async_orm.{target}"
        return env.get_domain("py").resolve_xref(
            env, node["refdoc"], app.builder, "obj", full, node, contnode
        )
    documented = _sqlalchemy_name(env, reftype, target)
    if documented is None or documented == target:
        return None
    node["reftarget"] = documented
    resolved = resolve_reference_in_inventory(env, "sqlalchemy", node, contnode)
    if resolved is None:
        node["reftarget"] = target
    return resolved


def _async_orm_names() -> set[str]:
    import async_orm

    return set(async_orm.__all__)


def setup(app: Sphinx) -> dict[str, Any]:
    # private module-level defaults (``_POPULATE_EXISTING_DEFAULT``) -> shown as
    app.add_config_value("public_names_defaults", {}, "env", types=frozenset({dict}))
    for objtype in ("function", "method", "class", "exception", "attribute", "property", "data"):
        base = PythonDomain.directives[objtype]
        directive = type(base.__name__, (_PublicNames, base), {})
        app.add_directive_to_domain("py", objtype, directive, override=True)
    # after intersphinx's own handler (priority 500): only what it could not resolve
    app.connect("missing-reference", missing_reference, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
