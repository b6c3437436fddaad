"""Low-latency wake-ups and cancels on PostgreSQL: ``NOTIFY`` when runs become ready or a running
run is cancelled, ``LISTEN`` in workers.

A trigger sends the notification inside its own transaction, so PostgreSQL delivers it only when the
runs are committed (and never for a rolled-back trigger). Idle workers wait on it, with the poll
interval as a fallback, so a new run starts within milliseconds. A cancel of a leased run notifies
``durably_cancels`` with ``<run id>:<lease generation>`` the same way; the worker holding that lease
stops the attempt before its next step. On SQLite nothing is sent: workers poll, and a step boundary
asks the database whether the run was cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from django.db import connections

logger = logging.getLogger(__name__)

CHANNEL = "durably_runs"
CANCEL_CHANNEL = "durably_cancels"
MAX_BACKOFF = 30.0

OnCancel = Callable[[UUID, int], None]


def notify_ready(alias: str, queues: Iterable[str]) -> None:
    """Tell listening workers that runs in ``queues`` are ready (delivered on commit)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for queue in sorted(set(queues)):
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])


def notify_cancelled(alias: str, run_id: UUID, generation: int) -> None:
    """Tell the worker holding lease ``generation`` of a run that it was cancelled (delivered on
    commit)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CANCEL_CHANNEL, f"{run_id}:{generation}"])


def parse_cancel(payload: str) -> tuple[UUID, int] | None:
    """``(run_id, generation)`` of a cancel notification, or ``None`` for a malformed one."""
    run_id, _, generation = payload.partition(":")
    try:
        return UUID(run_id), int(generation)
    except ValueError:
        return None


class Listener:
    """Sets ``wake`` whenever runs become ready, and hands cancels to ``on_cancel``, from a thread
    with its own connection.

    Uses a dedicated psycopg connection in autocommit mode (``LISTEN`` must not sit in a
    transaction). Connection errors are logged and retried with backoff; while disconnected the
    worker simply polls. ``wake`` is also set after every reconnect, since notifications sent while
    disconnected are lost. For the same reason :attr:`live_since` (a
    :class:`~django_durably.leases.CancelFeed`) says since when it has been listening without a
    break, so a running attempt knows whether a cancel could have been missed and must be asked
    for at its next step boundary.
    """

    def __init__(
        self,
        alias: str,
        wake: threading.Event,
        *,
        on_cancel: OnCancel | None = None,
        check_interval: float = 0.25,
    ) -> None:
        self.alias = alias
        self.wake = wake
        self.on_cancel = on_cancel
        self.check_interval = check_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self._live_since: float | None = None

    @property
    def live_since(self) -> float | None:
        """``time.monotonic()`` when the current uninterrupted ``LISTEN`` began, or ``None``."""
        return self._live_since

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
        if self.on_cancel is not None:
            connection.execute(f"LISTEN {CANCEL_CHANNEL}")
        return connection

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL and self.on_cancel is not None:
            if (cancel := parse_cancel(payload)) is not None:
                self.on_cancel(*cancel)
        else:
            self.wake.set()

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            connection = None
            try:
                connection = self._connect()
                self._live_since = time.monotonic()
                self.connected.set()
                self.wake.set()
                backoff = 0.5
                while not self._stopping.is_set():
                    for notification in connection.notifies(timeout=self.check_interval):
                        self._dispatch(notification.channel, notification.payload)
                        if self._stopping.is_set():
                            break
            except Exception as exc:
                self._live_since = None
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
                self._live_since = None
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:  # noqa: S110 - closing a broken connection may fail; ignore
                        pass
