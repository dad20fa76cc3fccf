"""Settings of the async_orm Django example: no Django ORM, async_orm only."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = ["todos"]
MIDDLEWARE = [
    # Django's own (as startproject writes them, less the contrib apps'): the JSON
    # views are csrf_exempt, since their clients are programs with no CSRF token
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # one async_orm session per request: committed if the response is < 400
    "async_orm.django.AsyncSessionMiddleware",
]
ROOT_URLCONF = "todoproject.urls"
ASGI_APPLICATION = "todoproject.asgi.application"

# The example keeps its data with async_orm only; Django's own ORM is unused.
DATABASES: dict[str, dict[str, str]] = {}

ASYNC_ORM_DATABASES = {
    "default": {
        # a sync SQLAlchemy URL; PostgreSQL: postgresql+psycopg://user@host/db
        "URL": os.environ.get("DATABASE_URL") or "sqlite:///todos.db",
        "ENGINE_OPTIONS": {"pool_size": 10, "max_overflow": 10},
        "SESSION_OPTIONS": {"expire_on_commit": False},
    }
}
