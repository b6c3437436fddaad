"""Settings for ``durably_worker`` subprocesses started by ``tests/acceptance``.

Everything from :mod:`tests.settings`, but the databases are the test databases the pytest process
created (a worker process is not a test runner, so it uses them as its ``NAME`` directly), and the
durably app is routed to the one under test:

* ``DURABLY_WORKER_ALIAS``: ``default`` (SQLite) or ``postgres``;
* ``DURABLY_WORKER_SQLITE``: the pytest process's SQLite test file;
* ``DURABLY_WORKER_PG_DB``: the pytest process's PostgreSQL test database name;
* ``DURABLY_WORKER_CONN_MAX_AGE`` (optional): ``CONN_MAX_AGE`` in seconds for every database. Unset,
  Django's default 0 applies and the worker opens a fresh connection per claim and per run;
* ``DURABLY_WORKER_CONN_HEALTH_CHECKS=1`` (optional): ``CONN_HEALTH_CHECKS`` for every database;
* ``DURABLY_WORKER_MAX_RECLAIMS``, ``DURABLY_WORKER_MAX_ABANDONED_THREADS`` (optional): the
  settings of those names.
"""

from __future__ import annotations

import copy
import os

from django.core.exceptions import ImproperlyConfigured

from tests import routers
from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as _BASE_DATABASES

WORKER_ALIAS = os.environ.get("DURABLY_WORKER_ALIAS", "default")

DATABASES = copy.deepcopy(_BASE_DATABASES)
DATABASES["default"]["NAME"] = os.environ["DURABLY_WORKER_SQLITE"]
if os.environ.get("DURABLY_WORKER_PG_DB") and "postgres" in DATABASES:
    DATABASES["postgres"]["NAME"] = os.environ["DURABLY_WORKER_PG_DB"]
if WORKER_ALIAS not in DATABASES:
    raise ImproperlyConfigured(
        f"DURABLY_WORKER_ALIAS={WORKER_ALIAS!r} is not a configured database."
    )
if WORKER_ALIAS == "postgres" and not os.environ.get("DURABLY_WORKER_PG_DB"):
    raise ImproperlyConfigured("DURABLY_WORKER_ALIAS=postgres needs DURABLY_WORKER_PG_DB.")
for _database in DATABASES.values():
    if os.environ.get("DURABLY_WORKER_CONN_MAX_AGE"):
        _database["CONN_MAX_AGE"] = int(os.environ["DURABLY_WORKER_CONN_MAX_AGE"])
    if os.environ.get("DURABLY_WORKER_CONN_HEALTH_CHECKS") == "1":
        _database["CONN_HEALTH_CHECKS"] = True

routers.use(WORKER_ALIAS)

for _name in ("MAX_RECLAIMS", "MAX_ABANDONED_THREADS"):
    if os.environ.get(f"DURABLY_WORKER_{_name}"):
        globals()[f"DURABLY_{_name}"] = int(os.environ[f"DURABLY_WORKER_{_name}"])
