"""``python -m async_orm_bench``: run the benchmark suite (``--help`` for the flags)."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
