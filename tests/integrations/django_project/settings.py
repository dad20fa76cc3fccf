"""Settings of the small Django project the integration tests run.

The tests configure Django from this module with ``settings.configure()`` (see
``tests/integrations/conftest.py``) rather than ``DJANGO_SETTINGS_MODULE``, so
nothing leaks into the environment of other tests or of subprocesses.  Each
test points ``ASYNC_ORM_DATABASES`` at its own database.
"""

SECRET_KEY = "async-orm-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "tests.integrations.django_project.urls"
INSTALLED_APPS: list[str] = []
# async_orm does not need Django's own ORM: no DATABASES at all.
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "async_orm.django.AsyncSessionMiddleware",
]
LOGGING_CONFIG = None
ASYNC_ORM_DATABASES: dict[str, dict[str, object]] = {}
