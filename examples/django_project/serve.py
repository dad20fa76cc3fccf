"""Create the tables, then serve the example project under uvicorn (ASGI).

::

    python examples/django_project/serve.py
    python examples/django_project/serve.py --database-url postgresql+psycopg://postgres@127.0.0.1/test
    DATABASE_URL=sqlite:///other.db python examples/django_project/serve.py --port 8001

The same, by hand, from ``examples/django_project``::

    python manage.py create_tables
    uvicorn todoproject.asgi:application --lifespan off
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the async_orm Django example.")
    parser.add_argument(
        "--database-url",
        default=None,
        help="sync SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///todos.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "todoproject.settings")
    sys.path.insert(0, str(HERE))

    import django
    import uvicorn
    from django.core.management import call_command

    django.setup()
    call_command("create_tables")
    # Django's ASGI handler does not speak the lifespan protocol.
    uvicorn.run("todoproject.asgi:application", host=args.host, port=args.port, lifespan="off")


if __name__ == "__main__":
    main()
