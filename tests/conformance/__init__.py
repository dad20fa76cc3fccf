"""SQLAlchemy's own asyncio test suite, run against async_orm (issue 15).

``python -m tests.conformance`` downloads the sdist of the installed SQLAlchemy,
points ``test/ext/asyncio/test_engine.py``, ``test_session.py`` and
``test_scoping.py`` at async_orm, runs them with SQLAlchemy's own pytest plugin
and compares the outcome with ``expected_failures.txt``.  See README.md.

Nothing here is collected by the normal test run (see ``conftest.py``).
"""
