"""ASGI entry point: ``uvicorn todoproject.asgi:application --lifespan off``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "todoproject.settings")

application = get_asgi_application()
