"""Shared by the scripts of this folder (imported after the stand-in is installed)."""

from __future__ import annotations

import os


def database_url() -> str:
    return os.environ["THIRDPARTY_DB_URL"]


def report_greenlet() -> None:
    """Print whether greenlet can be imported: the test checks it against its run."""
    try:
        import greenlet  # noqa: F401
    except ImportError:
        print("greenlet: absent")
    else:
        print("greenlet: present")
