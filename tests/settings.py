"""Settings for the test suite.

SQLite is always used (database alias ``default``). PostgreSQL is added as alias ``postgres`` when
the server named by ``DURABLY_TEST_POSTGRES`` (a libpq URL, default the local server) answers; tests
that touch the database run once on each. Without a server the PostgreSQL half is skipped with a
reason, unless ``DURABLY_REQUIRE_POSTGRES=1`` (set by CI), which makes that an error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

SECRET_KEY = "django-durably-tests-only"  # noqa: S105
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_durably",
    "tests",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

SQLITE_TEST_FILE = Path(tempfile.gettempdir()) / f"durably-test-{os.getpid()}.sqlite3"
DATABASES: dict[str, dict[str, object]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(SQLITE_TEST_FILE),
        # The settings a production SQLite deployment should use: WAL (readers never block the
        # writer), IMMEDIATE transactions and a busy timeout (writers queue instead of failing).
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
        },
        # A file, not memory: worker threads and subprocesses must share it, and shared-cache
        # in-memory databases report table locks instead of waiting on the busy timeout.
        "TEST": {"NAME": str(SQLITE_TEST_FILE)},
    }
}
DATABASE_ROUTERS = ["tests.routers.DurablyTestRouter"]


def _postgres_database(url: str) -> dict[str, object]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", "postgres"),
        "USER": params.get("user", "postgres"),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", "127.0.0.1"),
        "PORT": params.get("port", "5432"),
        # One test database per test process, so concurrent runs on one server never collide.
        "TEST": {
            "NAME": os.environ.get(
                "DURABLY_TEST_POSTGRES_DBNAME", f"test_django_durably_{os.getpid()}"
            )
        },
    }


def _postgres_unavailable(url: str) -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'django-durably[test]')"
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {url} is unreachable: {str(exc).strip().splitlines()[0]}"
    return None


POSTGRES_URL = os.environ.get("DURABLY_TEST_POSTGRES", DEFAULT_POSTGRES_URL)
POSTGRES_SKIP_REASON = _postgres_unavailable(POSTGRES_URL)
if POSTGRES_SKIP_REASON is None:
    DATABASES["postgres"] = _postgres_database(POSTGRES_URL)
elif os.environ.get("DURABLY_REQUIRE_POSTGRES") == "1":
    raise ImproperlyConfigured(
        f"DURABLY_REQUIRE_POSTGRES=1 but {POSTGRES_SKIP_REASON}. Start PostgreSQL or point "
        "DURABLY_TEST_POSTGRES at one."
    )

DURABLY_WAIT_POLL_INTERVAL = 0.02
