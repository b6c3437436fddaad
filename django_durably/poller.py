"""One database reader per process (and database) for every open event stream.

An event stream used to read the database from its own request thread, holding a connection for
its whole life (an hour by default): fifty streams took fifty connections. Streams now register a
:class:`Watcher` with the process's :class:`RunPoller` for their database, and wait. The poller's
thread reads, every poll interval, the rows of all watched runs with three queries (the runs, the
steps and the log lines written since each watcher's position), on one connection, and hands each
watcher its run's rows. The thread starts with the first watcher and stops, closing its connection,
when the last one leaves, so an idle process holds no connection for streams.

The rows are read unscoped by run id: each stream checked its caller's access when it opened.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar
from uuid import UUID

from django.db import connections

from django_durably.models import Run, RunLog, Step

__all__ = ["RUN_FIELDS", "RunPoller", "Watcher", "poller_for"]

logger = logging.getLogger(__name__)

_RowOfRun = TypeVar("_RowOfRun", Step, RunLog)

RUN_FIELDS = (
    "id",
    "job_name",
    "queue",
    "status",
    "attempt",
    "failed_attempts",
    "retry_at",
    "wake_at",
    "waiting_for",
    "parent_id",
    "progress",
    "completed_step_count",
    "current_step_index",
    "created_at",
    "started_at",
    "completed_at",
    "error",
    "output",
)
"""The columns of a run that streams show."""


class Watcher(Protocol):
    """What a stream gives the poller: the run it follows, how often, and how far it has read."""

    run_id: UUID
    poll_interval: float
    last_step_id: int
    last_log_id: int

    def deliver(
        self, row: dict[str, Any] | None, steps: Sequence[Step], logs: Sequence[RunLog]
    ) -> None:
        """Called from the poller's thread after each read: the run's row (``None`` once it is
        gone), and its steps and log lines with ids past ``last_step_id`` and ``last_log_id``, in
        id order. Must be quick and must not touch the database."""
        ...

    def failed(self, error: BaseException) -> None:
        """Called from the poller's thread when a read failed (it is tried again next interval)."""
        ...


class RunPoller:
    """Reads the watched runs of one database from one thread (see the module's docstring)."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._watchers: set[Watcher] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def watch(self, watcher: Watcher) -> None:
        """Start handing ``watcher`` its run's rows (starting the thread if it is not running)."""
        with self._lock:
            self._watchers.add(watcher)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"durably-stream-poller-{self.alias}", daemon=True
                )
                self._thread.start()
        self._wake.set()  # read at once: the new watcher should not wait a whole interval

    def unwatch(self, watcher: Watcher) -> None:
        """Stop handing ``watcher`` rows; the thread stops once no watcher is left."""
        with self._lock:
            self._watchers.discard(watcher)
        self._wake.set()

    @property
    def watching(self) -> int:
        """How many watchers are registered."""
        with self._lock:
            return len(self._watchers)

    @property
    def running(self) -> bool:
        """Whether the thread (and so possibly its connection) is alive."""
        with self._lock:
            return self._thread is not None

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    watchers = list(self._watchers)
                    if not watchers:
                        self._thread = None
                        return
                self._wake.clear()
                self._poll_once(watchers)
                self._wake.wait(min(w.poll_interval for w in watchers))
        finally:
            connections[self.alias].close()

    def _poll_once(self, watchers: list[Watcher]) -> None:
        try:
            rows, steps, logs = self._read(watchers)
        except Exception as exc:  # a database error, or anything else: the thread must live on
            logger.warning(
                "Event streams: reading runs failed; trying again.",
                exc_info=True,
                extra={"action": "stream_poll_failed"},
            )
            connections[self.alias].close()  # a broken connection is replaced on the next read
            for watcher in watchers:
                watcher.failed(exc)
            return
        for watcher in watchers:
            watcher.deliver(
                rows.get(watcher.run_id),
                [s for s in steps.get(watcher.run_id, ()) if s.id > watcher.last_step_id],
                [line for line in logs.get(watcher.run_id, ()) if line.id > watcher.last_log_id],
            )

    def _read(
        self, watchers: list[Watcher]
    ) -> tuple[dict[UUID, dict[str, Any]], dict[UUID, list[Step]], dict[UUID, list[RunLog]]]:
        """Three statements for every watched run: rows, new steps, new log lines."""
        run_ids = {w.run_id for w in watchers}
        rows = {
            row["id"]: row
            for row in Run.objects.using(self.alias).filter(pk__in=run_ids).values(*RUN_FIELDS)
        }
        steps = self._newer(Step, run_ids, min(w.last_step_id for w in watchers))
        logs = self._newer(RunLog, run_ids, min(w.last_log_id for w in watchers))
        return rows, steps, logs

    def _newer(
        self, model: type[_RowOfRun], run_ids: set[UUID], after: int
    ) -> dict[UUID, list[_RowOfRun]]:
        """The rows of ``model`` (steps or log lines) of these runs with an id above ``after``, by
        run, oldest first."""
        by_run: dict[UUID, list[_RowOfRun]] = defaultdict(list)
        for row in (
            model.objects.using(self.alias).filter(run_id__in=run_ids, id__gt=after).order_by("id")
        ):
            by_run[row.run_id].append(row)
        return by_run


_pollers: dict[str, RunPoller] = {}
_pollers_lock = threading.Lock()


def poller_for(alias: str) -> RunPoller:
    """This process's poller for database ``alias``."""
    with _pollers_lock:
        if alias not in _pollers:
            _pollers[alias] = RunPoller(alias)
        return _pollers[alias]
