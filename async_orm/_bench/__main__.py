"""``python -m async_orm._bench``: the same as ``python -m async_orm bench``."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
