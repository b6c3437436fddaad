"""Housekeeping for when there is nothing to claim: purging finished runs past ``DURABLY_RETENTION``.

Idle workers and :func:`~django_durably.executor.process_until_idle` apply retention here, at most
once per ``DURABLY_RETENTION_INTERVAL`` each. Expired leases need no pass of their own: a leased run
whose lease has expired is claimable again, so the claim that found nothing ready looked at them
already (and took them, had there been any).
"""

from __future__ import annotations

import logging
import random
import threading
import time

from django.db import DatabaseError, connections

from django_durably.conf import durably_settings
from django_durably.database import db_alias
from django_durably.events import send_worker_error
from django_durably.operations import purge_runs

logger = logging.getLogger(__name__)


class Retention:
    """Purges runs older than ``DURABLY_RETENTION``, one batch at a time, at most once per
    ``DURABLY_RETENTION_INTERVAL`` (give or take 10%, so workers started together spread out).

    The interval is read at each call and measured from the last purge, so a changed setting takes
    effect at once. Thread-safe: of concurrent calls, at most one purges.
    """

    def __init__(self) -> None:
        self._last: float | None = None
        self._spread = 1.0
        self._lock = threading.Lock()

    def apply_if_due(self, *, worker_id: str) -> int | None:
        """Purge one batch if retention is on and due; return how many runs were deleted, or
        ``None`` when no purge was attempted or it failed (logged and sent as ``worker_error``)."""
        retention = durably_settings.RETENTION
        if retention is None:
            return None
        interval = durably_settings.RETENTION_INTERVAL
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < interval * self._spread:
                return None
            self._last = now
            self._spread = random.uniform(0.9, 1.1)  # noqa: S311 - spreading, not security
        try:
            return purge_runs(retention)
        except DatabaseError as exc:
            logger.exception("Retention purge failed; retrying in %.0fs.", interval)
            send_worker_error(exc, context="maintenance", worker_id=worker_id)
            connections[db_alias()].close()
            return None
