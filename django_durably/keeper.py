"""Keeps the leases of running jobs alive from a background thread, and applies cancels to them.

One :class:`LeaseKeeper` serves all the runs of one process (or worker): every renewal interval it
renews all of their leases in one UPDATE and records, on each attempt's :class:`LeaseHandle`, whether
the run was cancelled or the lease lost. The job notices at its next step boundary. If renewals keep
failing (say the database is down), each handle's local deadline passes before the lease does in the
database, and the job stops as lost before another worker could have reclaimed it.

A worker's notification listener hands cancels to :meth:`LeaseKeeper.cancel` as they are committed,
so a cancelled attempt stops before its next step starts instead of at the next renewal.

The keeper also wakes up at each attempt's timeout (``timeouts``) and ends an attempt that ran past
it with one fenced write; ``on_timed_out`` tells the worker, which frees the slot.

Attempts are keyed by ``(run_id, generation)``: one process may hold an old attempt of a run that has
not noticed its loss yet beside a new claim of the same run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from uuid import UUID

from django.db import close_old_connections, connections

from django_durably import leases
from django_durably.events import send_worker_error
from django_durably.leases import CancelFeed, LeaseHandle
from django_durably.models import Run
from django_durably.timeouts import TimedOutEnd, end_on_time

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews tracked leases every ``interval`` seconds until :meth:`stop`."""

    # How long a cancel for an attempt not tracked yet is remembered: it can arrive between the
    # claim's commit and :meth:`track`.
    EARLY_CANCEL_SECONDS = 60.0

    def __init__(
        self,
        *,
        lease_seconds: float,
        interval: float,
        feed: CancelFeed | None = None,
        worker_id: str = "",
        on_timed_out: Callable[[LeaseHandle, TimedOutEnd], None] | None = None,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.feed = feed
        self.worker_id = worker_id
        self.on_timed_out = on_timed_out
        self._poke = threading.Event()  # a timeout was set: look at the deadlines again
        self._handles: dict[tuple[UUID, int], LeaseHandle] = {}
        self._early_cancels: dict[tuple[UUID, int], float] = {}
        self._lock = threading.Lock()
        # Held while renewing. Whoever writes several of these runs in one statement (a worker
        # recording ends) holds it too: two multi-row UPDATEs of the same rows, running at once,
        # could lock them in opposite orders and deadlock.
        self.writing = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, run: Run, *, claimed_at: float) -> LeaseHandle:
        """Start keeping the lease ``run`` was just claimed with; ``claimed_at`` is
        ``time.monotonic()`` before the claim was sent."""
        handle = LeaseHandle(
            run_id=run.pk,
            generation=run.lease_generation,
            deadline=claimed_at + self.lease_seconds,
            confirmed_at=claimed_at,
            feed=self.feed,
            wake_keeper=self._poke.set,
        )
        with self._lock:
            if self._early_cancels.pop(handle.key, None) is not None:
                handle.state = "cancelled"
            self._handles[handle.key] = handle
        return handle

    def untrack(self, handle: LeaseHandle) -> None:
        with self._lock:
            if self._handles.get(handle.key) is handle:
                del self._handles[handle.key]

    def tracked(self) -> list[LeaseHandle]:
        with self._lock:
            return list(self._handles.values())

    def cancel(self, run_id: UUID, generation: int) -> None:
        """The run was cancelled under lease ``generation``: its attempt stops at its next step
        boundary (or :meth:`~django_durably.context.StepContext.check`). Called by the listener."""
        key = (run_id, generation)
        now = time.monotonic()
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                # Not tracked yet (or already ended): remember it for a moment, for a claim that
                # committed before the cancel but is not tracked yet.
                self._early_cancels = {
                    early: at
                    for early, at in self._early_cancels.items()
                    if now - at < self.EARLY_CANCEL_SECONDS
                }
                self._early_cancels[key] = now
                return
            if handle.state == "held":
                handle.state = "cancelled"
        logger.info(
            "Run %s: cancelled; stopping before its next step.",
            run_id,
            extra={"action": "cancel_noticed", "run_id": str(run_id)},
        )

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="durably-lease-keeper", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._poke.set()
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
            states = leases.renew([h.key for h in handles], self.lease_seconds)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Renewed %d of %d lease(s) in %.3fs: %s",
                sum(state == "held" for state in states.values()),
                len(handles),
                time.monotonic() - sent_at,
                ", ".join(f"{run_id}:{state}" for (run_id, _g), state in states.items()),
                extra={"action": "renewed", "worker_id": self.worker_id, "count": len(handles)},
            )
        for handle in handles:
            state = states.get(handle.key, "lost")
            if state == "held":
                handle.deadline = sent_at + self.lease_seconds
                handle.confirm(sent_at)
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

    def end_timed_out(self) -> None:
        """End every attempt that ran past its timeout (see ``timeouts``)."""
        now = time.monotonic()
        with self._lock:
            due = [
                (handle, expired)
                for handle in self._handles.values()
                if handle.state == "held"
                and handle.limits is not None
                and (expired := handle.limits.expired(now)) is not None
            ]
        for handle, expired in due:
            with self.writing:
                end = end_on_time(handle, expired)
            if end is None:
                # Cancelled, lost or just ended (the renewal or the job says which), or the
                # database did not answer: look again at the next renewal, not in a busy loop.
                handle.limits.postpone(now + self.interval)
                continue
            logger.warning(
                "Run %s: attempt %d ran past its %s timeout; ended (%s).",
                handle.run_id,
                handle.limits.run_attempt,
                "step" if expired == "step" else "job",
                "retry at " + end.retry_at.isoformat() if end.retry_at else "failed",
                extra={"action": "timed_out", "run_id": str(handle.run_id)},
            )
            if self.on_timed_out is not None:
                self.on_timed_out(handle, end)

    def _next_wake(self, next_renewal: float) -> float:
        """Seconds until the next renewal or the earliest timeout, whichever comes first."""
        wake = next_renewal
        with self._lock:
            for handle in self._handles.values():
                if handle.state == "held" and handle.limits is not None:
                    deadline = handle.limits.next_deadline()
                    if deadline is not None:
                        wake = min(wake, deadline)
        return max(wake - time.monotonic(), 0.0)

    def _loop(self) -> None:
        try:
            next_renewal = time.monotonic() + self.interval
            while not self._stopping.is_set():
                self._poke.wait(self._next_wake(next_renewal))
                self._poke.clear()
                if self._stopping.is_set():
                    break
                try:
                    self.end_timed_out()
                    if time.monotonic() < next_renewal:
                        continue
                    next_renewal = time.monotonic() + self.interval
                    self.renew_now()
                except Exception as exc:
                    logger.exception(
                        "Lease renewal failed; retrying in %.1fs.",
                        self.interval,
                        extra={"action": "renew_failed"},
                    )
                    send_worker_error(exc, context="lease_renewal", worker_id=self.worker_id)
                    # A connection the server dropped stays broken: close it, so the next renewal
                    # reconnects instead of failing until the process restarts.
                    close_old_connections()
        finally:
            connections.close_all()
