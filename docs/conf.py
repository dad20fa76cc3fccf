"""Sphinx configuration for the async_orm documentation.

CI builds it nitpicky, with warnings as errors::

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

with the ``docs`` extra installed (Sphinx, the furo theme, myst-parser for the
Markdown changelog).  It needs no network: the intersphinx inventories of
Python, SQLAlchemy, Django and psycopg are committed in ``docs/_inventories``
(see the README there for where they come from and how to refresh them).

Two small directives are defined here:

``.. optional-toctree::``
    A toctree that lists only the entries whose ``.rst`` file exists.  Some pages
    (benchmarks, integrations, reliability) are written by other parts of the
    project and may not exist yet; the index names them all and the build neither
    fails nor warns while one is missing.

``.. public-api:: MODULE``
    An autodoc entry for every name of a module's ``__all__``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.directives.other import TocTree
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

sys.path.insert(0, str(HERE / "_ext"))

# CI installs async_orm; a bare checkout builds too.
try:
    import async_orm
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(ROOT))
    import async_orm

from async_orm.django import DEFAULT_DB_ALIAS  # noqa: E402
from async_orm.session import _POPULATE_EXISTING_DEFAULT  # noqa: E402

# async_orm.django imports neither Django nor its settings until a function that
# needs them is called, so documenting it needs no Django project (nor Django):
# autodoc reports an import error, which fails the build, if that ever changes.

# -- project -------------------------------------------------------------------

project = "async_orm"
author = "the async_orm authors"
copyright = "the async_orm authors"
release = async_orm.__version__
version = ".".join(release.split(".")[:2])

# -- general -------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "myst_parser",  # CHANGELOG.md, included by changelog.rst
    "public_names",  # _ext/public_names.py: no private names in signatures
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "_inventories", "Thumbs.db", ".DS_Store"]
highlight_language = "python3"
nitpicky = True
nitpick_ignore = [
    # SQLAlchemy classes that its annotations (mirrored here) use but its docs do
    # not document, so there is nothing to link to.
    ("py:class", "TypedReturnsRows"),
    ("py:class", "ORMOption"),
    ("py:class", "sqlalchemy.engine.result.RMKeyView"),
]


def _error_suffix_example() -> str:
    """How an error message ends, as :mod:`async_orm.exc` writes it (errors.rst
    quotes it, so the page cannot disagree with the messages)."""
    from async_orm.exc import EventLoopIOError

    error = EventLoopIOError.__new__(EventLoopIOError)  # _code_str() reads only .code
    return error._code_str()


rst_epilog = f".. |error-suffix-example| replace:: ``{_error_suffix_example()}``\n"

# -- intersphinx -----------------------------------------------------------------

# Each inventory is read from the committed file only, so the build is the same
# offline (CI) as online; links point at the online docs of the same version.
INVENTORIES = HERE / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(INVENTORIES / "python.inv")),
    "sqlalchemy": ("https://docs.sqlalchemy.org/en/21/", str(INVENTORIES / "sqlalchemy.inv")),
    "django": ("https://docs.djangoproject.com/en/5.2/", str(INVENTORIES / "django.inv")),
    "psycopg": ("https://www.psycopg.org/psycopg3/docs/", str(INVENTORIES / "psycopg.inv")),
}

# -- autodoc -------------------------------------------------------------------

autoclass_content = "class"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# Docstrings are written for this library; never show SQLAlchemy's in their place.
autodoc_inherit_docstrings = False

# private module-level defaults in signatures, shown by value (see _ext/public_names.py)
public_names_defaults = {
    "_POPULATE_EXISTING_DEFAULT": repr(_POPULATE_EXISTING_DEFAULT),
    "DEFAULT_DB_ALIAS": repr(DEFAULT_DB_ALIAS),
}
# Public aliases shown by name instead of expanded.
autodoc_type_aliases = {
    name: f"~async_orm.asgi.{name}" for name in ("ASGIApp", "Scope", "Receive", "Send", "Message")
}

# -- myst (the changelog) -------------------------------------------------------

myst_heading_anchors = 3

# -- html ----------------------------------------------------------------------

html_theme = "furo"
html_title = f"async_orm {release}"
html_static_path = ["_static"]
html_css_files = ["async_orm.css"]
html_theme_options = {
    "navigation_with_keys": True,
}
html_show_sourcelink = False

# -- .. optional-toctree:: -----------------------------------------------------


class OptionalTocTree(TocTree):
    """A toctree whose entries are kept only if their source file exists."""

    def run(self) -> list[nodes.Node]:
        kept = StringList()
        srcdir = Path(self.env.srcdir)
        for offset, line in enumerate(self.content):
            entry = line.strip()
            if not entry:
                continue
            # A missing dependency makes Sphinx re-read this document on every
            # build, so a page that appears later is picked up incrementally too.
            path = srcdir / f"{entry}.rst"
            self.env.note_dependency(str(path))
            if path.is_file():
                kept.append(entry, *self.content.info(offset))
        if not kept:
            return []
        self.content = kept
        return super().run()


# -- .. public-api:: ------------------------------------------------------------


def _source_line(obj: Any) -> int:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 1 << 30


def _own_bases(cls: type) -> bool:
    """True if ``cls`` inherits public members from another async_orm class."""
    return any(
        base.__module__.startswith("async_orm") and base is not cls for base in cls.__mro__[1:]
    )


class PublicAPI(SphinxDirective):
    """Document every name of a module's ``__all__``, in source order.

    ``.. public-api:: async_orm.engine`` generates an ``autoclass`` (every member),
    ``autofunction`` or ``autodata`` for each public name, under the name users
    import: ``async_orm.X`` when the package exports it, else ``async_orm.engine.X``.
    A name added to ``__all__`` is documented without touching the page.

    The content may add text to an entry: an unindented line names the object, the
    indented lines below it are appended to its documentation.
    """

    required_arguments = 1
    has_content = True

    def _extras(self) -> dict[str, list[str]]:
        extras: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in self.content:
            if line and not line[0].isspace():
                current = extras.setdefault(line.strip(), [])
            elif current is not None:
                current.append(line)
        return extras

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        package = importlib.import_module(modname.split(".")[0])
        extras = self._extras()
        unknown = set(extras) - set(module.__all__)
        if unknown:
            logger.warning(
                "public-api %s: %s not in __all__",
                modname,
                ", ".join(sorted(unknown)),
                location=self.get_location(),
            )
        objects = [(name, getattr(module, name)) for name in module.__all__]
        objects.sort(key=lambda item: _source_line(item[1]))
        lines: list[str] = []
        for name, obj in objects:
            exported = name in package.__all__ and getattr(package, name, None) is obj
            target = f"{package.__name__}.{name}" if exported else f"{modname}.{name}"
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {target}", "   :members:", "   :undoc-members:"]
                if _own_bases(obj):
                    lines.append("   :inherited-members:")
                if "__call__" in obj.__dict__:
                    lines.append("   :special-members: __call__")
            elif inspect.isroutine(obj):
                lines.append(f".. autofunction:: {target}")
            else:
                lines.append(f".. autodata:: {target}")
            if name in extras:
                lines.append("")
                lines += [f"   {line.strip()}" if line.strip() else "" for line in extras[name]]
            lines.append("")
        source = self.get_source_info()[0]
        content = StringList(lines, source=source)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, content, container)
        return container.children


# -- autodoc hooks ---------------------------------------------------------------

#: Members the result classes inherit from SQLAlchemy's FilterResult machinery
#: that are part of their public API, with docstrings written for this library.
INHERITED_RESULT_DOCS = {
    "keys": [
        "The column keys of the rows, as SQLAlchemy's ``RMKeyView``.",
        "",
        "Synchronous: the keys are known when the result is created, so no thread",
        "hop is made.",
    ],
    "yield_per": [
        "Fetch ``num`` rows per thread hop from now on, and return this result.",
        "",
        "Without it, ``async for`` and the fetching methods (``fetchmany()``,",
        "``partitions()``, ...) fetch the ``yield_per`` execution option's number",
        "of rows per hop, or 1000.",
    ],
}


def _from_sqlalchemy(obj: Any) -> bool:
    if isinstance(obj, property):
        obj = obj.fget
    module = getattr(obj, "__module__", None) or ""
    return module.startswith("sqlalchemy")


def _inherited_from_sqlalchemy(obj: Any) -> bool:
    """A method, property or SQLAlchemy-internal descriptor (``memoized_attribute``)
    defined by SQLAlchemy, as opposed to an attribute whose *value* is a SQLAlchemy
    class (``sync_session_class = Session``)."""
    if inspect.isclass(obj):
        return obj.__module__.startswith("sqlalchemy.util")
    return (inspect.isroutine(obj) or isinstance(obj, property)) and _from_sqlalchemy(obj)


def skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """With ``:inherited-members:``, document only members written in async_orm,
    plus the few public ones the result classes inherit from SQLAlchemy's result
    machinery (they get docstrings of our own below)."""
    if (
        what == "class"
        and getattr(options, "inherited_members", None)
        and _inherited_from_sqlalchemy(obj)
    ):
        return name not in INHERITED_RESULT_DOCS
    return None


def process_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    short = name.rsplit(".", 1)[-1]
    if what == "method" and short in INHERITED_RESULT_DOCS and _from_sqlalchemy(obj):
        lines[:] = list(INHERITED_RESULT_DOCS[short])


def process_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Hide the private ``_Documented`` mixin of the errors; show what to catch."""
    bases[:] = [base for base in bases if not getattr(base, "__name__", "").startswith("_")]


# -- every error code has its section in errors.rst -------------------------------


def error_codes() -> dict[str, str]:
    """``code`` -> class name, for every error class of :mod:`async_orm.exc`."""
    from async_orm import exc

    codes = {}
    for name in exc.__all__:
        code = getattr(getattr(exc, name), "code", None)
        if code:
            codes[code] = name
    return codes


def check_error_sections(app: Any, env: Any) -> None:
    """Warn (an error under ``-W``) when an error's ``code`` has no section of
    ``errors.rst`` with that exact anchor: the messages point readers there."""
    labels = env.domaindata["std"]["labels"]
    for code, name in sorted(error_codes().items()):
        if labels.get(code, ("",))[0] != "errors":
            logger.warning(
                "async_orm.exc.%s has code %r, but errors.rst has no section labelled '.. _%s:'",
                name,
                code,
                code,
                location="errors",
            )


def drop_local_contents(app: Any, doctree: nodes.document) -> None:
    """Drop the pages' ``.. contents::`` boxes: furo lists a page's sections
    itself ("On this page"), and styles a second list as an error."""
    for topic in list(doctree.findall(nodes.topic)):
        if "contents" in topic["classes"]:
            topic.parent.remove(topic)


#: Images at least this many pixels wide (the benchmark plots) get the class
#: ``wide-figure``: _static/async_orm.css lets them use the room beside the text.
WIDE_FIGURE_PX = 1000


def _png_width(path: Path) -> int:
    """The width of a PNG image, from its header; 0 for anything else."""
    try:
        with path.open("rb") as file:
            header = file.read(24)
    except OSError:
        return 0
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        return 0
    return int.from_bytes(header[16:20], "big")


def mark_wide_figures(app: Any, doctree: nodes.document) -> None:
    for image in doctree.findall(nodes.image):
        uri = image.get("uri", "")
        if _png_width(Path(app.srcdir) / uri) >= WIDE_FIGURE_PX:
            image["classes"].append("wide-figure")


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", mark_wide_figures)
    app.connect("doctree-read", drop_local_contents)
    app.connect("env-check-consistency", check_error_sections)
    app.add_directive("optional-toctree", OptionalTocTree)
    app.add_directive("public-api", PublicAPI)
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("autodoc-process-bases", process_bases)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
