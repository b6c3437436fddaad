"""A run's live event stream, as server-sent events (``GET /runs/{id}/events``).

The stream reads the database, so it sees what workers in any process write. It starts with a
``snapshot`` of the run, then sends one event per change as it is observed:

=============  ===========================================================================
event          data
=============  ===========================================================================
``snapshot``   the run (status, progress, attempts, retry_at, wake_at, waiting_for, parent_id,
               step counts, times, output, error)
``status``     ``{"status", "attempt", "retry_at", "wake_at", "waiting_for"}`` whenever one of
               them changes (``retry_at`` is set when the run went back to pending to be tried
               again; ``waiting_for`` and ``wake_at`` when it stopped at a durable wait, and
               ``waiting_for`` stays set once it is woken, until the wait returns)
``step``       a step row written since: ``{"index", "name", "status", "attempt", ...}``
``progress``   ``{"current", "total", "message"}``, at most one per ``progress_interval``
``log``        a log line written since: ``{"level", "message", "data", "step_name", ...}``
``end``        ``{"status"}`` when the run is finished (or ``"deleted"``); the stream closes
=============  ===========================================================================

Each event has an increasing ``id``. Times are ISO 8601 (``2026-11-22T09:30:02.390Z``), as in the
rest of the API. A status change to ``leased`` (a new attempt) comes before the steps and log lines
of that attempt; a change that ends an attempt (back to ``pending``, say for a retry, to
``waiting`` at a durable wait, or to a finished status) comes after them, and a finished status
just before ``end``. A waiting run's stream stays open: its wake (back to ``pending``) is a status
event too.
Outputs longer than :data:`PREVIEW_BYTES` of JSON are sent as a preview (``output`` null,
``output_truncated`` true, ``output_preview`` the start of the JSON text); the run and step
endpoints have them whole.

Between events a ``: keep-alive`` comment is sent every ``keepalive`` seconds so proxies keep the
connection open. A client that reconnects gets a fresh snapshot, which is authoritative.

**Resources.** After its snapshot a stream holds no database connection: this process's
:mod:`~django_durably.poller` reads every open stream's runs on one connection and wakes the streams.
At most ``DURABLY_STREAM_MAX_PER_PROCESS`` streams are open in one process; past that, a stream is
refused with 503 and ``Retry-After``. A client that went away is noticed within a poll interval
(by looking at its socket when the server exposes it, else by a keep-alive comment each interval,
whose write fails), and its stream ends.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse

from django_durably.conf import durably_settings
from django_durably.models import TERMINAL_STATUSES, RunLog, RunQuerySet, RunStatus, Step
from django_durably.poller import RUN_FIELDS, poller_for
from django_durably.serialization import dump

__all__ = [
    "PREVIEW_BYTES",
    "RETRY_AFTER_SECONDS",
    "EventStream",
    "event_stream_response",
    "format_event",
    "open_event_stream",
    "open_streams",
    "run_events",
]

PREVIEW_BYTES = 4096
"""Outputs longer than this (bytes of JSON) are previewed in events."""
RETRY_AFTER_SECONDS = 5
"""The ``Retry-After`` of a stream refused because the process has its maximum open."""
KEEPALIVE = ": keep-alive\n\n"


def format_event(event: str, data: Any, event_id: int) -> str:
    """One server-sent event: ``id``, ``event`` and a single-line JSON ``data`` field (times in
    ISO 8601, as the API's JSON has them)."""
    payload = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"))
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n"


def preview(data: dict[str, Any], key: str = "output") -> dict[str, Any]:
    """``data`` with ``data[key]`` replaced by a preview when its JSON is over
    :data:`PREVIEW_BYTES`; ``<key>_truncated`` says which."""
    value = data.get(key)
    if value is None:
        return {**data, f"{key}_truncated": False}
    text = dump(value)
    if len(text) <= PREVIEW_BYTES:
        return {**data, f"{key}_truncated": False}
    return {**data, key: None, f"{key}_truncated": True, f"{key}_preview": text[:PREVIEW_BYTES]}


# -- the per-process limit ---------------------------------------------------------------------

_open = 0
_open_lock = threading.Lock()


def _take_slot() -> bool:
    global _open
    with _open_lock:
        if _open >= durably_settings.STREAM_MAX_PER_PROCESS:
            return False
        _open += 1
        return True


def _give_slot() -> None:
    global _open
    with _open_lock:
        _open -= 1


def open_streams() -> int:
    """How many event streams are open in this process."""
    with _open_lock:
        return _open


# -- one stream --------------------------------------------------------------------------------


@dataclass(eq=False)
class EventStream:
    """The events of one run, as SSE text chunks: an iterator with ``close()``.

    The snapshot is read (with the caller's scoped queryset) on the first ``next()``, in the
    calling thread, whose idle database connections are then closed; later changes come from the
    process's poller. Ends after ``end``, after ``max_seconds``, or when ``client_gone`` says so.
    """

    runs: RunQuerySet
    run_id: UUID
    poll_interval: float
    keepalive: float
    progress_interval: float
    max_seconds: float
    client_gone: Callable[[], bool | None] | None = None
    holds_slot: bool = False
    # What the client has been told (written by the poller's thread once watching).
    last_step_id: int = 0
    last_log_id: int = 0
    _status: str = ""
    _attempt: int = 0
    _retry_at: Any = None
    _wait: Any = None  # (wake_at, waiting_for) as last told
    _progress: Any = None
    _progress_sent_at: float = 0.0
    _progress_pending: bool = False
    _sequence: int = 0
    _inbox: queue.SimpleQueue[str | None] = field(default_factory=queue.SimpleQueue)
    _events: Iterator[str] | None = None
    _closed: bool = False
    _alias: str = ""

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> str:
        if self._events is None:
            self._events = self._generate()
        return next(self._events)

    def close(self) -> None:
        """Stop watching and give the process's slot back (idempotent; also before any event)."""
        if self._closed:
            return
        self._closed = True
        if self._alias:
            poller_for(self._alias).unwatch(self)
        if self._events is not None:
            self._events.close()  # type: ignore[attr-defined]  # a generator
        if self.holds_slot:
            _give_slot()

    # -- the stream's own thread ---------------------------------------------------------------

    def _generate(self) -> Iterator[str]:
        row = self.runs.filter(pk=self.run_id).values(*RUN_FIELDS).first()
        alias = self.runs.db
        if row is None:
            _close_idle_connections()
            yield self._event("end", {"status": "deleted"})
            return
        snapshot = self._snapshot(row, alias)
        _close_idle_connections()  # nothing more is read from this thread
        yield snapshot
        if row["status"] in TERMINAL_STATUSES:
            yield self._event("end", {"status": row["status"]})
            return
        self._alias = alias
        poller_for(alias).watch(self)
        try:
            yield from self._follow()
        finally:
            poller_for(alias).unwatch(self)

    def _follow(self) -> Iterator[str]:
        started = last_sent = time.monotonic()
        while True:
            now = time.monotonic()
            remaining = self.max_seconds - (now - started)
            if remaining <= 0:
                return
            try:
                chunk = self._inbox.get(timeout=min(self.poll_interval, remaining))
            except queue.Empty:
                chunk = ""
            if chunk is None:  # the end event was the last chunk
                return
            if chunk:
                yield chunk
                last_sent = time.monotonic()
                continue
            gone = self.client_gone() if self.client_gone is not None else False
            if gone:
                return
            # gone is None: the socket cannot be seen, so write to it each interval.
            if gone is None or time.monotonic() - last_sent >= self.keepalive:
                yield KEEPALIVE
                last_sent = time.monotonic()

    def _event(self, event: str, data: Any) -> str:
        self._sequence += 1
        return format_event(event, data, self._sequence)

    def _snapshot(self, row: dict[str, Any], alias: str) -> str:
        self._status, self._attempt, self._progress = row["status"], row["attempt"], row["progress"]
        self._retry_at = row["retry_at"]
        self._wait = (row["wake_at"], row["waiting_for"])
        self.last_step_id = _max_id(Step.objects.using(alias).filter(run_id=self.run_id))
        self.last_log_id = _max_id(RunLog.objects.using(alias).filter(run_id=self.run_id))
        self._progress_sent_at = time.monotonic()
        return self._event("snapshot", preview({**row, "id": str(row["id"])}))

    # -- the poller's thread -------------------------------------------------------------------

    def deliver(
        self, row: dict[str, Any] | None, steps: Sequence[Step], logs: Sequence[RunLog]
    ) -> None:
        if self._closed:
            return
        if row is None:
            self._send("end", {"status": "deleted"})
            self._end()
            return
        finished = row["status"] in TERMINAL_STATUSES
        starting = row["status"] == RunStatus.LEASED
        if starting:  # a new attempt's status comes before what that attempt wrote
            self._status_change(row)
        for step in steps:
            self.last_step_id = step.id
            self._send("step", preview(_step_data(step)))
        for line in logs:
            self.last_log_id = line.id
            self._send("log", _log_data(line))
        self._progress_change(row, finished=finished)
        if not starting:  # an attempt's end (finished, or pending for a retry) comes after
            self._status_change(row)
        if finished:
            self._send("end", {"status": row["status"]})
            self._end()

    def _end(self) -> None:
        self._inbox.put(None)
        poller_for(self._alias).unwatch(self)  # nothing more to read, even if nobody reads on

    def failed(self, error: BaseException) -> None:
        """A failed read is retried by the poller; the client keeps waiting."""

    def _send(self, event: str, data: Any) -> None:
        self._inbox.put(self._event(event, data))

    def _status_change(self, row: dict[str, Any]) -> None:
        seen = (
            row["status"],
            row["attempt"],
            row["retry_at"],
            (row["wake_at"], row["waiting_for"]),
        )
        if seen != (self._status, self._attempt, self._retry_at, self._wait):
            self._status, self._attempt, self._retry_at, self._wait = seen
            self._send(
                "status",
                {
                    "status": row["status"],
                    "attempt": row["attempt"],
                    "retry_at": row["retry_at"],
                    "wake_at": row["wake_at"],
                    "waiting_for": row["waiting_for"],
                },
            )

    def _progress_change(self, row: dict[str, Any], *, finished: bool) -> None:
        if row["progress"] != self._progress:
            self._progress = row["progress"]
            self._progress_pending = True
        now = time.monotonic()
        if self._progress_pending and (
            finished or now - self._progress_sent_at >= self.progress_interval
        ):
            self._send("progress", self._progress)
            self._progress_pending = False
            self._progress_sent_at = now


def _step_data(step: Step) -> dict[str, Any]:
    return {
        "index": step.index,
        "name": step.name,
        "status": step.status,
        "attempt": step.attempt,
        "step_attempt": step.step_attempt,
        "started_at": step.started_at,
        "completed_at": step.completed_at,
        "output": step.output,
        "error": step.error,
    }


def _log_data(line: RunLog) -> dict[str, Any]:
    return {
        "level": line.level,
        "message": line.message,
        "data": line.data,
        "step_name": line.step_name,  # "" outside a step, as in GET /runs/{id}/logs
        "attempt": line.attempt,
        "created_at": line.created_at,
    }


def _max_id(qs: Any) -> int:
    last = qs.order_by("-id").values_list("id", flat=True).first()
    return int(last or 0)


def _close_idle_connections() -> None:
    """Close this thread's database connections unless a transaction holds one (a test's, or
    ATOMIC_REQUESTS): a stream must not pin a connection while it waits."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def run_events(
    runs: RunQuerySet,
    run_id: UUID,
    *,
    poll_interval: float | None = None,
    keepalive: float | None = None,
    progress_interval: float | None = None,
    max_seconds: float | None = None,
    client_gone: Callable[[], bool | None] | None = None,
) -> EventStream:
    """The events of one run, read from ``runs`` (already narrowed to what the caller may see).

    Ends after the ``end`` event, or after ``max_seconds`` (the client then reconnects).
    ``client_gone`` is called each idle poll interval: true ends the stream, ``None`` (the
    client cannot be seen) sends a keep-alive comment each interval instead.
    """
    settings = durably_settings
    return EventStream(
        runs=runs,
        run_id=run_id,
        poll_interval=settings.STREAM_POLL_INTERVAL if poll_interval is None else poll_interval,
        keepalive=settings.STREAM_KEEPALIVE if keepalive is None else keepalive,
        progress_interval=(
            settings.STREAM_PROGRESS_INTERVAL if progress_interval is None else progress_interval
        ),
        max_seconds=settings.STREAM_MAX_SECONDS if max_seconds is None else max_seconds,
        client_gone=client_gone,
    )


# -- HTTP ----------------------------------------------------------------------------------------


def open_event_stream(request: HttpRequest, runs: RunQuerySet, run_id: UUID) -> HttpResponseBase:
    """The streaming response of ``GET /runs/{id}/events``, or a 503 when this process already
    has ``DURABLY_STREAM_MAX_PER_PROCESS`` streams open."""
    if not _take_slot():
        response = JsonResponse(
            {
                "detail": "Too many event streams are open; try again later.",
                "code": "too_many_streams",
            },
            status=503,
        )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    events = run_events(runs, run_id, client_gone=client_probe(request))
    events.holds_slot = True
    return event_stream_response(events)


def event_stream_response(events: Iterator[str]) -> StreamingHttpResponse:
    """Wrap events in a ``text/event-stream`` response that proxies do not buffer. The server
    closes the response when the client goes away, which closes ``events``."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def client_probe(request: HttpRequest) -> Callable[[], bool | None]:
    """A function telling whether the request's client closed its connection: ``True`` when it
    did, ``False`` when it is open, ``None`` when the server does not expose the socket."""
    sock = _client_socket(request.META)
    if sock is None:
        return lambda: None

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # open, with nothing to read: an SSE client sends nothing more
        except OSError:
            return True

    return gone


def _client_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client's socket: gunicorn puts it in the environ; Django's development and test servers
    (wsgiref) read the request through a ``LimitedStream`` over a buffered file on it."""
    candidate = environ.get("gunicorn.socket")
    if isinstance(candidate, socket.socket):
        return candidate
    stream: Any = environ.get("wsgi.input")
    reader = getattr(getattr(stream, "_read", None), "__self__", stream)  # the buffered file
    sock = getattr(getattr(reader, "raw", None), "_sock", None)  # its SocketIO's socket
    return sock if isinstance(sock, socket.socket) else None
