"""async_orm's benchmark suite: ``python -m async_orm_bench`` (see docs/benchmarks.rst).

Not part of the async_orm package: install it from a checkout with
``pip install -e . -e ./benchmarks``. Contestants (:mod:`.contestants`), the workloads each of
them runs (:mod:`.measure`), running them isolated and interleaved (:mod:`.runner`), medians,
paired ratios and the targets (:mod:`.report`), and plots (:mod:`.plots`). Optional packages
(aiosqlite, asyncpg, greenlet, matplotlib) are imported only when used; a contestant whose
packages are missing is skipped with a note saying what to install.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
