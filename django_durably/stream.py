"""A run's live event stream, as server-sent events (``GET /runs/{id}/events``).

The stream reads the database, so it sees what workers in any process write. It starts with a
``snapshot`` of the run, then sends one event per change as it is observed:

=============  ===========================================================================
event          data
=============  ===========================================================================
``snapshot``   the run (status, progress, attempt, step counts, timestamps)
``status``     ``{"status", "attempt"}`` whenever the status or attempt changes
``step``       a step row written since: ``{"index", "name", "status", "attempt", ...}``
``progress``   ``{"current", "total", "message"}``, at most one per ``progress_interval``
``log``        a log line written since: ``{"level", "message", "data", "step_name", ...}``
``end``        ``{"status"}`` when the run is finished (or ``"deleted"``); the stream closes
=============  ===========================================================================

Each event has an increasing ``id``. Between events a ``: keep-alive`` comment is sent every
``keepalive`` seconds so proxies keep the connection open. A client that reconnects gets a fresh
snapshot, which is authoritative.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.http import StreamingHttpResponse

from django_durably.conf import durably_settings
from django_durably.models import TERMINAL_STATUSES, RunLog, RunQuerySet, Step

RUN_FIELDS = (
    "id",
    "job_name",
    "queue",
    "status",
    "attempt",
    "progress",
    "completed_step_count",
    "current_step_index",
    "created_at",
    "started_at",
    "completed_at",
    "error",
    "output",
)


def format_event(event: str, data: Any, event_id: int) -> str:
    """One server-sent event: ``id``, ``event`` and a single-line JSON ``data`` field."""
    payload = json.dumps(data, default=str, separators=(",", ":"))
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n"


@dataclass
class _Cursor:
    """What the stream has already told the client."""

    status: str = ""
    attempt: int = 0
    progress: Any = None
    progress_sent_at: float = 0.0
    progress_pending: bool = False
    last_step_id: int = 0
    last_log_id: int = 0
    sequence: int = 0
    events: list[str] = field(default_factory=list)

    def emit(self, event: str, data: Any) -> None:
        self.sequence += 1
        self.events.append(format_event(event, data, self.sequence))


def run_events(
    runs: RunQuerySet,
    run_id: UUID,
    *,
    poll_interval: float | None = None,
    keepalive: float | None = None,
    progress_interval: float | None = None,
    max_seconds: float | None = None,
) -> Iterator[str]:
    """The events of one run, read from ``runs`` (already narrowed to what the caller may see).

    Ends after the ``end`` event, or after ``max_seconds`` (the client then reconnects).
    """
    poll = durably_settings.STREAM_POLL_INTERVAL if poll_interval is None else poll_interval
    keepalive = durably_settings.STREAM_KEEPALIVE if keepalive is None else keepalive
    throttle = (
        durably_settings.STREAM_PROGRESS_INTERVAL
        if progress_interval is None
        else progress_interval
    )
    limit = durably_settings.STREAM_MAX_SECONDS if max_seconds is None else max_seconds
    started = last_sent = time.monotonic()
    cursor = _Cursor()
    first = True
    while True:
        row = runs.filter(pk=run_id).values(*RUN_FIELDS).first()
        if row is None:
            cursor.emit("end", {"status": "deleted"})
        elif first:
            _snapshot(cursor, row, run_id)
        else:
            _changes(cursor, row, run_id, throttle)
        first = False
        if cursor.events:
            yield from cursor.events
            cursor.events.clear()
            last_sent = time.monotonic()
        if row is None or row["status"] in TERMINAL_STATUSES:
            if row is not None:
                cursor.emit("end", {"status": row["status"]})
                yield from cursor.events
            return
        now = time.monotonic()
        if now - started >= limit:
            return
        if now - last_sent >= keepalive:
            yield ": keep-alive\n\n"
            last_sent = now
        time.sleep(poll)


def _snapshot(cursor: _Cursor, row: dict[str, Any], run_id: UUID) -> None:
    cursor.status, cursor.attempt, cursor.progress = row["status"], row["attempt"], row["progress"]
    cursor.last_step_id = _max_id(Step.objects.filter(run_id=run_id))
    cursor.last_log_id = _max_id(RunLog.objects.filter(run_id=run_id))
    cursor.progress_sent_at = time.monotonic()
    cursor.emit("snapshot", {**row, "id": str(row["id"])})


def _changes(cursor: _Cursor, row: dict[str, Any], run_id: UUID, throttle: float) -> None:
    for step in Step.objects.filter(run_id=run_id, id__gt=cursor.last_step_id).order_by("id"):
        cursor.last_step_id = step.id
        cursor.emit(
            "step",
            {
                "index": step.index,
                "name": step.name,
                "status": step.status,
                "attempt": step.attempt,
                "started_at": step.started_at,
                "completed_at": step.completed_at,
                "output": step.output,
                "error": step.error,
            },
        )
    for log in RunLog.objects.filter(run_id=run_id, id__gt=cursor.last_log_id).order_by("id"):
        cursor.last_log_id = log.id
        cursor.emit(
            "log",
            {
                "level": log.level,
                "message": log.message,
                "data": log.data,
                "step_name": log.step_name or None,
                "attempt": log.attempt,
                "created_at": log.created_at,
            },
        )
    if row["progress"] != cursor.progress:
        cursor.progress = row["progress"]
        cursor.progress_pending = True
    finished = row["status"] in TERMINAL_STATUSES
    if cursor.progress_pending and (
        finished or time.monotonic() - cursor.progress_sent_at >= throttle
    ):
        cursor.emit("progress", cursor.progress)
        cursor.progress_pending = False
        cursor.progress_sent_at = time.monotonic()
    if row["status"] != cursor.status or row["attempt"] != cursor.attempt:
        cursor.status, cursor.attempt = row["status"], row["attempt"]
        cursor.emit("status", {"status": row["status"], "attempt": row["attempt"]})


def _max_id(qs: Any) -> int:
    last = qs.order_by("-id").values_list("id", flat=True).first()
    return int(last or 0)


def event_stream_response(events: Iterator[str]) -> StreamingHttpResponse:
    """Wrap events in a ``text/event-stream`` response that proxies do not buffer."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
