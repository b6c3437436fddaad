"""Settings of the chaos harness and its workers: one PostgreSQL database of the suite's own.

Environment (the harness sets it for its workers):

* ``DURABLY_CHAOS_URL``: the libpq URL of the chaos database (default: the suite's own cluster,
  ``postgresql://postgres@127.0.0.1:5444/durably_chaos``);
* ``DURABLY_CHAOS_ROLE``: ``harness`` or ``worker``; names the connections
  (``application_name`` ``chaos-<role>-<pid>``), so faults can target the workers' ones;
* ``DURABLY_CHAOS_LEASE_SECONDS``: ``DURABLY_LEASE_SECONDS`` (default 2);
* ``DURABLY_CHAOS_JOURNAL_DEADLINE``: how long a journal row is retried (``chaos.journal``).
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5444/durably_chaos"

SECRET_KEY = "django-durably-chaos-only"  # noqa: S105
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_durably", "chaos"]

_params = conninfo_to_dict(os.environ.get("DURABLY_CHAOS_URL", DEFAULT_URL))
_role = os.environ.get("DURABLY_CHAOS_ROLE", "harness")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.get("dbname", "durably_chaos"),
        "USER": _params.get("user", "postgres"),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", "127.0.0.1"),
        "PORT": _params.get("port", "5444"),
        "OPTIONS": {"application_name": f"chaos-{_role}-{os.getpid()}", "connect_timeout": 3},
    }
}
DURABLY_LEASE_SECONDS = float(os.environ.get("DURABLY_CHAOS_LEASE_SECONDS", "2"))
# The default, said here so the checker knows when a run is failed on purpose for losing its
# workers (``chaos.checker``).
DURABLY_MAX_RECLAIMS = 5
LOGGING = {"version": 1, "disable_existing_loggers": False}
