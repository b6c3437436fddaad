"""Keeps the leases of running jobs alive from a background thread.

One :class:`LeaseKeeper` serves all the runs of one process (or worker): every renewal interval it
renews all of their leases in one UPDATE and records, on each run's :class:`LeaseHandle`, whether the
run was cancelled or the lease lost. The job notices at its next step boundary. If renewals keep
failing (say the database is down), each handle's local deadline passes before the lease does in the
database, and the job stops as lost before another worker could have reclaimed it.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from uuid import UUID

from django.db import close_old_connections, connections

from django_durably import leases
from django_durably.leases import LeaseHandle
from django_durably.models import Run

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews tracked leases every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, *, lease_seconds: float, interval: float) -> None:
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._handles: dict[UUID, LeaseHandle] = {}
        self._lock = threading.Lock()
        # Held while renewing. Whoever writes several of these runs in one statement (a worker
        # recording ends) holds it too: two multi-row UPDATEs of the same rows, running at once,
        # could lock them in opposite orders and deadlock.
        self.writing = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, run: Run, *, claimed_at: float) -> LeaseHandle:
        """Start keeping ``run``'s lease; ``claimed_at`` is ``time.monotonic()`` before the claim."""
        handle = LeaseHandle(
            run_id=run.pk,
            generation=run.lease_generation,
            deadline=claimed_at + self.lease_seconds,
        )
        with self._lock:
            self._handles[run.pk] = handle
        return handle

    def untrack(self, handle: LeaseHandle) -> None:
        with self._lock:
            if self._handles.get(handle.run_id) is handle:
                del self._handles[handle.run_id]

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="durably-lease-keeper", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def renew_now(self) -> None:
        """Renew every tracked lease once and update the handles."""
        with self._lock:
            handles = [h for h in self._handles.values() if h.state == "held"]
        if not handles:
            return
        sent_at = time.monotonic()
        with self.writing:
            states = leases.renew({h.run_id: h.generation for h in handles}, self.lease_seconds)
        for handle in handles:
            state = states.get(handle.run_id, "lost")
            if state == "held":
                handle.deadline = sent_at + self.lease_seconds
            elif state == "finished":
                continue  # the run ended under this lease while we renewed: nothing to stop
            else:
                # Record the state before reporting it, so whoever sees the log line can rely on it.
                handle.state = state
                logger.warning(
                    "Run %s: lease renewal refused (%s); stopping at the next step boundary.",
                    handle.run_id,
                    state,
                    extra={"action": "lease_refused", "run_id": str(handle.run_id)},
                )

    def _loop(self) -> None:
        try:
            while not self._stopping.wait(self.interval):
                try:
                    self.renew_now()
                except Exception:
                    logger.exception(
                        "Lease renewal failed; retrying in %.1fs.",
                        self.interval,
                        extra={"action": "renew_failed"},
                    )
                    # A connection the server dropped stays broken: close it, so the next renewal
                    # reconnects instead of failing until the process restarts.
                    close_old_connections()
        finally:
            connections.close_all()
