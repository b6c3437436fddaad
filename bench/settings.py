"""Settings for the benchmarks: a PostgreSQL database of their own (created if missing)."""

from __future__ import annotations

import os

SECRET_KEY = "django-durably-bench-only"  # noqa: S105
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_durably", "bench"]

BENCH_DB = os.environ.get("DURABLY_BENCH_DB", "durably_bench")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": BENCH_DB,
        "USER": os.environ.get("DURABLY_BENCH_USER", "postgres"),
        "HOST": os.environ.get("DURABLY_BENCH_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DURABLY_BENCH_PORT", "5432"),
    }
}
LOGGING = {"version": 1, "disable_existing_loggers": False}
