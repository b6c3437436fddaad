"""The worker loop behind ``manage.py durably_worker``.

One :class:`Worker` claims runs for its free slots (several in one claim), executes each on one of its
``concurrency`` threads (each with its own database connection), and keeps all their leases alive
with one batched renewal per interval. A slot hands its job's end to the claim loop and takes the next
run; the claim loop claims for the freed slots, then writes every end that came in meanwhile in one
fenced statement (group commit). When idle it waits for a PostgreSQL notification, or the poll
interval, whichever comes first.

Timeouts: the lease keeper ends an attempt that ran past its timeout (``timeouts``) and tells the
worker, which gives that slot a fresh thread. The old thread is stuck in user code that Python
cannot interrupt: it is *abandoned* (fenced out by the generation bump, counted in
``WorkerStats.abandoned``, left to finish or hang as a daemon thread). When more than
``DURABLY_MAX_ABANDONED_THREADS`` are stuck at once, the worker stops claiming, hands its runs back
and asks to be restarted (``WorkerStats.restart_requested``; ``durably_worker`` then re-executes
itself), since only a new process gets rid of them.

Stopping: :meth:`Worker.stop` (first SIGTERM/SIGINT) stops claiming and lets running jobs finish
within ``grace_period``; runs still going after that are handed back. :meth:`Worker.stop` with
``hard=True`` (second signal) hands every running run back at once, so another worker can take it
without waiting for its lease to expire.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from django.db import DatabaseError, connections
from django.utils import timezone

from django_durably import leases
from django_durably.conf import durably_settings
from django_durably.database import db_alias, ensure_migrated
from django_durably.events import send_worker_error
from django_durably.executor import (
    AttemptEnd,
    RunOutcome,
    default_worker_id,
    log_outcome,
    record,
    run_job,
)
from django_durably.keeper import LeaseKeeper
from django_durably.leases import LeaseHandle
from django_durably.maintenance import Retention
from django_durably.models import Run
from django_durably.notifications import Listener
from django_durably.timeouts import TimedOutEnd
from django_durably.waits import wake_due_runs

logger = logging.getLogger(__name__)

DEFAULT_GRACE_PERIOD = 30.0
MAX_CLAIM_BACKOFF = 30.0


def recycle_connections() -> None:
    """Keep this thread's database connections across runs, replacing broken ones.

    A worker thread is one long-lived client, so unlike ``close_old_connections()`` a
    ``CONN_MAX_AGE`` of 0 does not mean a new connection for every claim and run (which would
    cost a connection set-up each time). A connection that saw an error is health-checked and
    replaced if it is broken; one past a positive ``CONN_MAX_AGE`` is replaced as usual.
    """
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or connection.in_atomic_block:
            continue
        if connection.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            connection.close_if_unusable_or_obsolete()
        elif connection.errors_occurred:
            if connection.is_usable():
                connection.errors_occurred = False
            else:
                connection.close()


@dataclass
class WorkerStats:
    """Counts of what a worker did: runs claimed, and runs by outcome (``completed``, ``failed``,
    ``retrying``, ``timed_out``, ``waiting``, ``cancelled``, ``lost``, ``released``, ``crashed``); threads
    abandoned in timed-out user code; whether it stopped to be restarted (too many abandoned)."""

    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    claim_errors: int = 0
    abandoned: int = 0
    restart_requested: bool = False


class Worker:
    """Claims and executes runs until stopped (or idle, or ``max_runs`` reached).

    A plain class with keyword-only settings: the management command parses options and calls
    ``Worker(...).run()``; tests can do the same in a thread.
    """

    def __init__(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        until_idle: bool = False,
        max_runs: int | None = None,
        worker_id: str | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        renew_interval: float | None = None,
        listen: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds or durably_settings.LEASE_SECONDS
        self.poll_interval = poll_interval or durably_settings.POLL_INTERVAL
        self.until_idle = until_idle
        self.max_runs = max_runs
        self.worker_id = worker_id or default_worker_id()
        self.grace_period = grace_period
        self.listen = listen
        interval = renew_interval or durably_settings.RENEW_INTERVAL
        self.keeper = LeaseKeeper(
            lease_seconds=self.lease_seconds,
            interval=min(interval, self.lease_seconds / 3),
            worker_id=self.worker_id,
            on_timed_out=self._on_timed_out,
        )
        self.stats = WorkerStats()
        self.alias = db_alias()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._retention = Retention()
        self._inbox: queue.Queue[tuple[Run, LeaseHandle] | None] = queue.Queue()
        # Every attempt holding a lease: queued, running, or ended but not recorded. Keyed by
        # ``(run_id, generation)``: after a cancel and a resume (or a pause past the lease) this
        # worker may claim a run whose earlier attempt is still running in another slot.
        self._running: dict[tuple[UUID, int], LeaseHandle] = {}
        self._busy = 0  # runs handed to the slots whose job has not returned yet
        self._ended: list[
            AttemptEnd
        ] = []  # returned jobs whose end the claim loop has yet to record
        self._running_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Attempts whose job function is running in a slot, with the slot's thread; and the ones
        # given up on at their timeout, whose thread is stuck in user code.
        self._in_slot: dict[tuple[UUID, int], threading.Thread] = {}
        self._abandoned: dict[tuple[UUID, int], threading.Thread] = {}
        self._slots_started = 0
        self.started = threading.Event()
        # When to look next for waiting runs whose timer is due (monotonic): every poll interval,
        # and sooner at the wake time of a run this worker saw go waiting.
        self._next_wake_check = 0.0

    # -- control -------------------------------------------------------------------------------

    def stop(self, *, hard: bool = False) -> None:
        """Stop claiming. ``hard`` also hands running runs back and exits without waiting."""
        if hard:
            self._hard_stop.set()
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def in_flight(self) -> int:
        """Runs this worker holds a lease on: queued for a slot, running, or ended but not yet
        recorded."""
        with self._running_lock:
            return len(self._running)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Run until stopped, idle (``until_idle``) or done (``max_runs``); return the stats.

        Raises :class:`~django_durably.exceptions.DatabaseNotMigrated` at once when durably's
        migrations are not applied (a database that does not answer yet is waited for by the
        claim loop instead).
        """
        with contextlib.suppress(DatabaseError):
            ensure_migrated(self.alias)
        logger.info(
            "Worker %s starting: queues=%s concurrency=%d lease=%.1fs poll=%.1fs",
            self.worker_id,
            ",".join(self.queues) if self.queues else "*",
            self.concurrency,
            self.lease_seconds,
            self.poll_interval,
            extra={"action": "worker_start", "worker_id": self.worker_id},
        )
        listener = self._start_listener()
        self.keeper.start()
        for _number in range(self.concurrency):
            self._start_slot()
        self.started.set()
        try:
            self._claim_loop()
            self._drain()
        finally:
            for _thread in self._threads:
                self._inbox.put(None)
            if self.in_flight() == 0:
                for thread in self._threads:
                    thread.join(timeout=5)
            self.keeper.stop()
            if listener is not None:
                listener.stop()
            connections.close_all()
            logger.info(
                "Worker %s stopped: %d claimed, outcomes %s",
                self.worker_id,
                self.stats.claimed,
                self.stats.outcomes or "{}",
                extra={"action": "worker_stop", "worker_id": self.worker_id},
            )
        return self.stats

    def _start_slot(self) -> None:
        """Start one slot thread (at start-up, or in place of one abandoned at a timeout)."""
        with self._running_lock:
            number = self._slots_started
            self._slots_started += 1
            thread = threading.Thread(
                target=self._slot_loop, name=f"durably-slot-{number}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def abandoned_threads(self) -> int:
        """Threads still stuck in the user code of attempts ended at their timeout."""
        with self._running_lock:
            return len(self._abandoned)

    def _start_listener(self) -> Listener | None:
        if not self.listen or not Listener.supported(self.alias):
            return None
        listener = Listener(self.alias, self._wake, on_cancel=self.keeper.cancel)
        self.keeper.feed = listener  # cancels reach running attempts at once
        return listener.start()

    def _claim_loop(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            self._wake_due_runs()
            with self._running_lock:
                free = self.concurrency - self._busy
            if self.max_runs is not None:
                free = min(free, self.max_runs - self.stats.claimed)
            claimed: list[Run] = []
            if free > 0 and self._children_ended():
                # A child's end wakes its parent when it is written: write it before claiming, so
                # this claim can take the parent at once.
                self._record_ended()
            if free > 0:
                try:
                    claimed = self._claim(free)
                    backoff = 0.0
                except DatabaseError as exc:
                    self.stats.claim_errors += 1
                    send_worker_error(exc, context="claim", worker_id=self.worker_id)
                    backoff = min(max(backoff * 2, 0.5), MAX_CLAIM_BACKOFF)
                    logger.warning(
                        "Claim failed (%s); retrying in %.1fs.",
                        str(exc).strip().splitlines()[0]
                        if str(exc).strip()
                        else type(exc).__name__,
                        backoff,
                        extra={"action": "claim_failed", "worker_id": self.worker_id},
                    )
                    connections[self.alias].close()
                    self._record_ended()
                    self._stopping.wait(backoff)
                    continue
            # Freed slots got their next runs first; now the ends that freed them are written.
            self._record_ended()
            if self.max_runs is not None and self.stats.claimed >= self.max_runs:
                return
            if free > 0 and not claimed and self.in_flight() == 0:
                self._apply_retention()  # housekeeping only when fully idle
            if claimed and len(claimed) == free:
                continue  # maybe more is ready; a full slot set waits below
            if self.until_idle and not claimed and self.in_flight() == 0:
                return
            # Idle or full: wait for a notification, a freed slot, a stop, the poll interval, or
            # the next due timer this worker knows of.
            interval = self.poll_interval * random.uniform(0.9, 1.1)  # noqa: S311
            until_timer = self._next_wake_check - time.monotonic()
            woken = self._wake.wait(max(0.0, min(interval, until_timer)))
            if logger.isEnabledFor(logging.DEBUG):
                self._log_wake_up(woken=woken, free=free - len(claimed))

    def _log_wake_up(self, *, woken: bool, free: int) -> None:
        if not woken:
            reason = "the poll interval passed"
        elif self._stopping.is_set():
            reason = "asked to stop"
        elif self._ended:
            reason = "a run ended"
        elif self.keeper.feed is not None:
            reason = "a notification"
        else:
            reason = "woken"
        logger.debug(
            "Woke up (%s) after waiting with %d of %d slot(s) free; looking for ready runs.",
            reason,
            free,
            self.concurrency,
            extra={"action": "woke_up", "worker_id": self.worker_id, "reason": reason},
        )

    def _children_ended(self) -> bool:
        """Whether an end waiting to be written is a child run's (its parent may be waiting)."""
        with self._running_lock:
            return any(end.run.parent_id is not None for end in self._ended)

    def _wake_due_runs(self) -> None:
        """Make pending the waiting runs whose timer is due, at most once per poll interval (and at
        the wake times this worker knows of); a database error waits for the next interval."""
        now = time.monotonic()
        if now < self._next_wake_check:
            return
        self._next_wake_check = now + self.poll_interval
        try:
            woken = wake_due_runs()
        except DatabaseError as exc:
            send_worker_error(exc, context="wake", worker_id=self.worker_id)
            connections[self.alias].close()
            return
        if woken:
            self._next_wake_check = now  # maybe more are due: look again on the next turn

    def _expect_timer(self, wake_at: datetime) -> None:
        """A run this worker saw go waiting wakes at ``wake_at``: look for due timers then."""
        delay = (wake_at - timezone.now()).total_seconds()
        self._next_wake_check = min(self._next_wake_check, time.monotonic() + max(0.0, delay))

    def _apply_retention(self) -> None:
        """When idle, purge runs older than ``DURABLY_RETENTION`` (one batch per interval)."""
        self._retention.apply_if_due(worker_id=self.worker_id)

    def _claim(self, limit: int) -> list[Run]:
        recycle_connections()
        claimed_at = time.monotonic()
        runs = leases.claim(
            worker_id=self.worker_id,
            queues=self.queues,
            limit=limit,
            lease_seconds=self.lease_seconds,
        )
        if runs and logger.isEnabledFor(logging.DEBUG):
            self._log_claims(runs, limit)
        for run in runs:
            handle = self.keeper.track(run, claimed_at=claimed_at)
            with self._running_lock:
                self._running[handle.key] = handle
                self._busy += 1
            self.stats.claimed += 1
            self._inbox.put((run, handle))
        return runs

    def _log_claims(self, runs: list[Run], limit: int) -> None:
        for run in runs:
            logger.debug(
                "run=%s job=%s attempt=%d claimed (generation %d, lease %.1fs; %d of %d free "
                "slot(s) filled)",
                run.pk,
                run.job_name,
                run.attempt,
                run.lease_generation,
                self.lease_seconds,
                len(runs),
                limit,
                extra={
                    "action": "claimed",
                    "run_id": str(run.pk),
                    "job": run.job_name,
                    "attempt": run.attempt,
                    "worker_id": self.worker_id,
                },
            )

    def _drain(self) -> None:
        """Wait for running jobs, then hand back whatever still runs.

        Without a stop request (``until_idle`` or ``max_runs``) it waits for every job; after a stop
        request it waits at most ``grace_period`` seconds from that request.
        """
        while not self._hard_stop.is_set():
            self._wake.clear()  # before recording: an end that comes in after it wakes the wait
            self._record_ended()
            if not self.in_flight():
                break
            if self._stop_requested_at is not None:
                remaining = self._stop_requested_at + self.grace_period - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "Grace period of %.0fs over; handing back %d running run(s).",
                        self.grace_period,
                        self.in_flight(),
                        extra={"action": "grace_over", "worker_id": self.worker_id},
                    )
                    break
            self._wake.wait(0.5)
        self._hand_back()

    def _hand_back(self) -> None:
        self._record_ended()  # runs that did end are recorded, not handed back
        with self._running_lock:
            running = list(self._running.values())
        for handle in running:
            handle.state = "lost"  # the job stops at its next step boundary and writes nothing
            try:
                released = leases.release(handle.run_id, handle.generation)
            except DatabaseError as exc:
                logger.exception(
                    "Could not hand back run %s; its lease will expire.", handle.run_id
                )
                send_worker_error(
                    exc, context="hand_back", worker_id=self.worker_id, run_id=handle.run_id
                )
                self._count("lost")  # not handed back: its lease expires instead
                continue
            outcome = "released" if released else "lost"
            self._count(outcome)
            logger.info(
                "run=%s outcome=%s worker=%s",
                handle.run_id,
                outcome,
                self.worker_id,
                extra={"action": "released", "run_id": str(handle.run_id)},
            )

    # -- slots ---------------------------------------------------------------------------------

    def _slot_loop(self) -> None:
        try:
            while True:
                item = self._inbox.get()
                if item is None:
                    return
                run, handle = item
                with self._running_lock:
                    self._in_slot[handle.key] = threading.current_thread()
                end = self._run_job(run, handle)
                with self._running_lock:
                    if self._abandoned.pop(handle.key, None) is not None:
                        # Given up on at its timeout: another thread has this slot now, and the
                        # end was written then. This thread's work is over.
                        logger.info(
                            "run=%s: a thread abandoned at its timeout returned; it exits.",
                            handle.run_id,
                            extra={"action": "abandoned_returned", "run_id": str(handle.run_id)},
                        )
                        return
                    del self._in_slot[handle.key]
                    self._busy -= 1
                    if end is None:
                        self._running.pop(handle.key, None)
                    else:
                        self._ended.append(end)
                if end is None:
                    self.keeper.untrack(handle)
                self._wake.set()
        finally:
            connections.close_all()

    def _on_timed_out(self, handle: LeaseHandle, end: TimedOutEnd) -> None:
        """The keeper ended ``handle``'s attempt at its timeout (called from the keeper's thread):
        log it, and if the job is still in user code, abandon its thread and start another."""
        cap = durably_settings.MAX_ABANDONED_THREADS
        with self._running_lock:
            stuck = self._in_slot.pop(handle.key, None)
            if stuck is not None:
                self._abandoned[handle.key] = stuck
                self._threads.remove(stuck)
                self._busy -= 1
                self._running.pop(handle.key, None)
                self.stats.abandoned += 1
            abandoned = len(self._abandoned)
        limits = handle.limits
        self._log_outcome(
            RunOutcome(
                run_id=handle.run_id,
                job_name=limits.job_name,
                attempt=limits.run_attempt,
                status="timed_out",
                duration=time.monotonic() - limits.started,
                error=end.error,
                retry_at=end.retry_at,
            )
        )
        if stuck is None:
            return  # the job had returned already: its end is refused when recorded
        self.keeper.untrack(handle)
        logger.warning(
            "run=%s: thread %s is stuck in the timed-out job; a new thread takes its slot "
            "(%d abandoned thread(s), at most %d).",
            handle.run_id,
            stuck.name,
            abandoned,
            cap,
            extra={"action": "thread_abandoned", "run_id": str(handle.run_id)},
        )
        if abandoned > cap:
            logger.error(
                "Worker %s: %d threads are stuck in timed-out jobs (DURABLY_MAX_ABANDONED_THREADS "
                "is %d); stopping to be restarted.",
                self.worker_id,
                abandoned,
                cap,
                extra={"action": "restart_requested", "worker_id": self.worker_id},
            )
            self.stats.restart_requested = True
            self.stop()
        else:
            self._start_slot()
        self._wake.set()

    def _run_job(self, run: Run, handle: LeaseHandle) -> AttemptEnd | None:
        recycle_connections()
        try:
            return run_job(run, handle)
        except BaseException:
            logger.exception(
                "run=%s job=%s crashed the executor; its lease will expire",
                run.pk,
                run.job_name,
                extra={"action": "crashed", "run_id": str(run.pk), "job": run.job_name},
            )
            self._count("crashed")
            return None

    # -- recording ends ------------------------------------------------------------------------

    def _record_ended(self) -> None:
        """Record the ends of the jobs the slots finished since the last call, in one statement
        (group commit: a busy worker writes many completions per transaction)."""
        with self._running_lock:
            ended, self._ended = self._ended, []
        if not ended:
            return
        recycle_connections()
        debug = logger.isEnabledFor(logging.DEBUG)
        started = time.monotonic() if debug else 0.0
        with self.keeper.writing:  # never beside the renewal, which updates the same rows
            outcomes = record(ended, worker_id=self.worker_id)
        if debug:
            logger.debug(
                "Recorded the ends of %d run(s) in %.3fs: %s",
                len(outcomes),
                time.monotonic() - started,
                ", ".join(f"{outcome.run_id}:{outcome.status}" for outcome in outcomes),
                extra={"action": "recorded", "worker_id": self.worker_id, "count": len(outcomes)},
            )
        for end, outcome in zip(ended, outcomes, strict=True):
            if outcome.status != "timed_out":  # logged when it timed out
                self._log_outcome(outcome)
            if outcome.status == "lost":
                self._hand_back_lost(end.lease)
            if outcome.wake_at is not None:
                self._expect_timer(outcome.wake_at)
            self.keeper.untrack(end.lease)
            with self._running_lock:
                self._running.pop(end.lease.key, None)

    def _hand_back_lost(self, handle: LeaseHandle) -> None:
        """A run stopped as lost may still be ours in the database (say its checkpoint failed during
        a database outage): end the lease now so it is retried at once, not after it expires.
        Guarded by the generation, so a run another worker owns now is left alone."""
        try:
            leases.release(handle.run_id, handle.generation)
        except DatabaseError:
            connections[self.alias].close()

    def _log_outcome(self, outcome: RunOutcome) -> None:
        self._count(outcome.status)
        log_outcome(outcome, worker_id=self.worker_id, log=logger)

    def _count(self, status: str) -> None:
        with self._running_lock:
            self.stats.outcomes[status] = self.stats.outcomes.get(status, 0) + 1
