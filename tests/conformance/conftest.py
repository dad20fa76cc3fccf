"""Keep the conformance runner out of the normal test run.

The suite is SQLAlchemy's, downloaded at run time by ``python -m tests.conformance``
and run in a subprocess of its own; nothing in this directory is a test.
"""

collect_ignore_glob = ["*"]
