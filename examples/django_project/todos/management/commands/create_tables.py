"""``python manage.py create_tables``: create the example's tables."""

from typing import Any

from django.core.management.base import BaseCommand

from async_orm.django import get_engine
from todos.models import Base


class Command(BaseCommand):
    help = "Create the async_orm example's tables (if missing)."

    def handle(self, *args: Any, **options: Any) -> None:
        # A management command runs no event loop: plain sync SQLAlchemy on the
        # engine's sync_engine (which shares the async engine's pool) is fine.
        engine = get_engine().sync_engine
        Base.metadata.create_all(engine)
        engine.dispose()
        self.stdout.write(f"tables ready on {engine.url.render_as_string(hide_password=True)}")
