"""Sphinx builders that read a project and write nothing but its ``objects.inv``.

Used to make the inventories in this folder from the documentation sources that
SQLAlchemy's and Django's sdists ship (see README.md here); writing no HTML makes
a build of those large projects several times faster.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx
from sphinx.builders.dirhtml import DirectoryHTMLBuilder
from sphinx.builders.html import StandaloneHTMLBuilder


def _inventory_only(base: type[StandaloneHTMLBuilder], name: str) -> type[StandaloneHTMLBuilder]:
    """``base``, reading every document but writing only ``objects.inv``."""

    class Builder(base):  # type: ignore[valid-type, misc]
        def write(self, *args: Any, **kwargs: Any) -> None:
            pass

        def finish(self) -> None:
            self.dump_inventory()

    Builder.name = name
    Builder.__name__ = f"{base.__name__}InventoryOnly"
    return Builder


#: ``page.html#anchor`` links, as SQLAlchemy's and Python's docs have.
InventoryOnlyBuilder = _inventory_only(StandaloneHTMLBuilder, "inventory")
#: ``page/#anchor`` links, as Django's docs have.
DirInventoryOnlyBuilder = _inventory_only(DirectoryHTMLBuilder, "dirinventory")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_builder(InventoryOnlyBuilder)
    app.add_builder(DirInventoryOnlyBuilder)
    return {"parallel_read_safe": True}
