"""What the harness does through django_durably while faults happen: trigger runs (plain, with a
shared concurrency key, with an idempotency key from several threads at once), and cancel and
resume them like an operator. Every database call is retried across outages.

Needs Django set up with ``chaos.settings``.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from django.db import Error as DjangoDatabaseError
from django.db import connection, connections

from chaos.jobs import five_steps
from chaos.records import CancelRecord, IdempotentTrigger, ResumeRecord
from django_durably.exceptions import PendingRunExists, RunNotCancellable, RunNotResumable
from django_durably.models import Run
from django_durably.operations import cancel_run, resume_run

T = TypeVar("T")

RETRY_DEADLINE = 180.0


def retry_db(action: Callable[[], T], *, deadline: float = RETRY_DEADLINE) -> T:
    """``action()``, retried on database errors (closing this thread's broken connections) until
    it succeeds or ``deadline`` seconds have passed."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            return action()
        except (DjangoDatabaseError, psycopg.Error):
            connections.close_all()
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.25)


def count_unfinished() -> dict[str, int]:
    """Runs by status, of the runs that are not finished."""
    rows = Run.objects.exclude(status__in=("completed", "failed", "cancelled")).values_list(
        "status", flat=True
    )
    counts: dict[str, int] = defaultdict(int)
    for status in rows:
        counts[status] += 1
    return dict(counts)


def _clock_and_attempt(run_id: Any) -> tuple[float, int, str]:
    """The database clock now, and the run's attempt and status."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM clock_timestamp())::float8, attempt, status "
            "FROM durably_run WHERE id = %s",
            [run_id],
        )
        row = cursor.fetchone()
    return float(row[0]), int(row[1]), str(row[2])


class Feeder(threading.Thread):
    """Keeps ``backlog`` runs pending until stopped (or ``max_runs`` were triggered)."""

    def __init__(
        self,
        rng: random.Random,
        *,
        backlog: int,
        max_runs: int,
        keyed_share: float,
        runs_per_key: int,
        idempotent_share: float,
        idempotent_triggers: int,
        timing: dict[str, Any],
    ) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.rng = rng
        self.backlog = backlog
        self.max_runs = max_runs
        self.keyed_share = keyed_share
        self.runs_per_key = runs_per_key
        self.idempotent_share = idempotent_share
        self.idempotent_triggers = idempotent_triggers
        self.timing = timing
        self.stopping = threading.Event()
        self.triggered = 0
        self.keyed = 0
        self.deferred: list[tuple[str, dict[str, Any]]] = []
        self.idempotent: list[IdempotentTrigger] = []
        self.backlog_until = float("inf")
        self.errors: list[str] = []
        self._bursts = ThreadPoolExecutor(idempotent_triggers, thread_name_prefix="chaos-idem")
        self._burst_lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.max_runs and self.triggered >= self.max_runs:
                    break
                self._retry_deferred()
                pending = retry_db(lambda: Run.objects.filter(status="pending").count())
                for _ in range(min(self.backlog - pending, 25)):
                    if self.max_runs and self.triggered >= self.max_runs:
                        break
                    self._trigger_one()
                self.stopping.wait(0.1)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.backlog_until = time.time()
            connections.close_all()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self._bursts.shutdown(wait=True)

    def _input(self) -> dict[str, Any]:
        return {"n": self.triggered, "timing": self.timing}

    def _trigger_one(self) -> None:
        draw = self.rng.random()
        data = self._input()
        self.triggered += 1
        if draw < self.idempotent_share:
            self._burst(f"idem-{data['n']}", data)
        elif draw < self.idempotent_share + self.keyed_share:
            key = f"key-{self.keyed // self.runs_per_key}"
            self.keyed += 1
            if not self._trigger_keyed(key, data):
                self.deferred.append((key, data))
        else:
            retry_db(lambda: five_steps.trigger(data))

    def _trigger_keyed(self, key: str, data: dict[str, Any]) -> bool:
        try:
            retry_db(lambda: five_steps.trigger(data, concurrency_key=key))
        except PendingRunExists:
            return False  # a run of the key is still pending: try again once it is claimed
        return True

    def _retry_deferred(self) -> None:
        waiting, self.deferred = self.deferred, []
        for key, data in waiting:
            if not self._trigger_keyed(key, data):
                self.deferred.append((key, data))

    def _burst(self, key: str, data: dict[str, Any]) -> None:
        """``idempotent_triggers`` threads trigger the same key at the same moment."""
        barrier = threading.Barrier(self.idempotent_triggers)

        def one() -> IdempotentTrigger | None:
            try:
                barrier.wait(timeout=30)
                run = retry_db(lambda: five_steps.trigger(data, idempotency_key=key))
            except Exception as exc:
                self.errors.append(f"trigger of {key}: {type(exc).__name__}: {exc}")
                return None
            return IdempotentTrigger(key=key, run_id=str(run.pk), disposition=run.disposition)

        futures = [self._bursts.submit(one) for _ in range(self.idempotent_triggers)]
        results = [found for future in futures if (found := future.result()) is not None]
        with self._burst_lock:
            self.idempotent.extend(results)


class Operator(threading.Thread):
    """Cancels random running (or pending) runs, ``cancels_per_minute`` on average, and resumes a
    ``resume_share`` of them 0.5-5 s later, through ``django_durably.operations``."""

    def __init__(self, rng: random.Random, *, cancels_per_minute: float, resume_share: float):
        super().__init__(name="chaos-operator", daemon=True)
        self.rng = rng
        self.rate = cancels_per_minute / 60.0
        self.resume_share = resume_share
        self.stopping = threading.Event()
        self.seq = 0
        self.cancels: list[CancelRecord] = []
        self.resumes: list[ResumeRecord] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self._resumes: list[tuple[float, int, str, int]] = []  # (due, seq, run id, tries)

    def run(self) -> None:
        try:
            next_cancel = time.monotonic() + self._interval()
            while not self.stopping.is_set():
                now = time.monotonic()
                while self._resumes and self._resumes[0][0] <= now:
                    _due, _seq, run_id, tries = heapq.heappop(self._resumes)
                    self._resume(run_id, tries)
                if self.rate > 0 and now >= next_cancel:
                    self._cancel_one()
                    next_cancel = time.monotonic() + self._interval()
                self.stopping.wait(0.05)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            connections.close_all()

    def stop(self) -> None:
        """Stop cancelling; the resumes already planned happen now (final tries)."""
        self.stopping.set()
        self.join()
        try:
            while self._resumes:
                _due, _seq, run_id, _tries = heapq.heappop(self._resumes)
                self._resume(run_id, tries=99)
        finally:
            connections.close_all()

    def _interval(self) -> float:
        return self.rng.expovariate(self.rate) if self.rate > 0 else 3600.0

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _cancel_one(self) -> None:
        status = "leased" if self.rng.random() < 0.75 else "pending"
        run_id = retry_db(
            lambda: (
                Run.objects.filter(status=status).order_by("?").values_list("pk", flat=True).first()
            )
        )
        if run_id is None:
            return
        try:
            result = cancel_run(run_id, source="chaos")
        except RunNotCancellable:
            self.counts["cancel_too_late"] += 1
            return
        except (DjangoDatabaseError, psycopg.Error):
            # Did it commit? Only this thread cancels, so a cancelled run means it did.
            connections.close_all()
            ack_at, attempt, now_status = retry_db(lambda: _clock_and_attempt(run_id))
            if now_status == "cancelled":
                self._acknowledged(str(run_id), ack_at, attempt, "unknown")
            self.counts["cancel_interrupted"] += 1
            return
        if not result.cancelled:
            self.counts["cancel_already_cancelled"] += 1
            return
        ack_at, attempt, _status = retry_db(lambda: _clock_and_attempt(run_id))
        self._acknowledged(str(run_id), ack_at, attempt, result.from_status)

    def _acknowledged(self, run_id: str, ack_at: float, attempt: int, from_status: str) -> None:
        self.cancels.append(CancelRecord(self._next_seq(), run_id, ack_at, attempt, from_status))
        self.counts["cancel"] += 1
        if self.rng.random() < self.resume_share:
            due = time.monotonic() + self.rng.uniform(0.5, 5.0)
            heapq.heappush(self._resumes, (due, self.seq, run_id, 0))

    def _resume(self, run_id: str, tries: int) -> None:
        try:
            resume_run(run_id, source="chaos")
        except PendingRunExists:
            if tries < 10:  # a run of its concurrency key is pending: later
                heapq.heappush(self._resumes, (time.monotonic() + 2.0, self.seq, run_id, tries + 1))
            else:
                self.counts["resume_gave_up"] += 1
            return
        except (RunNotResumable, DjangoDatabaseError, psycopg.Error) as exc:
            # Only this thread resumes cancelled runs: one that is not cancelled any more was
            # resumed by an earlier try whose answer was lost (or by this one).
            connections.close_all()
            _at, _attempt, status = retry_db(lambda: _clock_and_attempt(run_id))
            if status == "cancelled":
                if isinstance(exc, RunNotResumable) or tries >= 10:
                    self.counts["resume_gave_up"] += 1
                else:
                    heapq.heappush(
                        self._resumes, (time.monotonic() + 1.0, self.seq, run_id, tries + 1)
                    )
                return
            self.counts["resume_interrupted"] += 1
        at, _attempt, _status = retry_db(lambda: _clock_and_attempt(run_id))
        self.resumes.append(ResumeRecord(self._next_seq(), run_id, at))
        self.counts["resume"] += 1
