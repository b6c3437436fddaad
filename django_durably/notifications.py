"""Low-latency wake-ups on PostgreSQL: ``NOTIFY`` when runs become ready, ``LISTEN`` in idle workers.

A trigger sends the notification inside its own transaction, so PostgreSQL delivers it only when the
runs are committed (and never for a rolled-back trigger). Idle workers wait on it, with the poll
interval as a fallback, so a new run starts within milliseconds. On SQLite nothing is sent and workers
poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from django.db import connections

logger = logging.getLogger(__name__)

CHANNEL = "durably_runs"
MAX_BACKOFF = 30.0


def notify_ready(alias: str, queues: Iterable[str]) -> None:
    """Tell listening workers that runs in ``queues`` are ready (delivered on commit)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for queue in sorted(set(queues)):
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])


class Listener:
    """Sets ``wake`` whenever a notification arrives, from a thread with its own connection.

    Uses a dedicated psycopg connection in autocommit mode (``LISTEN`` must not sit in a
    transaction). Connection errors are logged and retried with backoff; while disconnected the
    worker simply polls. ``wake`` is also set after every reconnect, since notifications sent while
    disconnected are lost.
    """

    def __init__(self, alias: str, wake: threading.Event, *, check_interval: float = 0.25) -> None:
        self.alias = alias
        self.wake = wake
        self.check_interval = check_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    @staticmethod
    def supported(alias: str) -> bool:
        return connections[alias].vendor == "postgresql"

    def start(self) -> Listener:
        self._thread = threading.Thread(target=self._loop, name="durably-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.check_interval + 5)
            self._thread = None

    def _connect(self) -> Any:
        import psycopg

        params = connections[self.alias].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("server_side_binding", None)
        connection = psycopg.connect(**params, autocommit=True)
        connection.execute(f"LISTEN {CHANNEL}")
        return connection

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            connection = None
            try:
                connection = self._connect()
                self.connected.set()
                self.wake.set()
                backoff = 0.5
                while not self._stopping.is_set():
                    for _notification in connection.notifies(timeout=self.check_interval):
                        self.wake.set()
                        if self._stopping.is_set():
                            break
            except Exception as exc:
                self.connected.clear()
                if self._stopping.is_set():
                    break
                logger.warning(
                    "Notification listener lost its connection (%s); polling, reconnecting in "
                    "%.1fs.",
                    exc,
                    backoff,
                    extra={"action": "listen_failed"},
                )
                self.wake.set()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:  # noqa: S110 - closing a broken connection may fail; ignore
                        pass
