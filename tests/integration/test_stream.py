"""The run event stream (``django_durably.stream``), read while a worker thread advances the run."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from django_durably import cancel_run, process_next
from django_durably.models import Run
from django_durably.stream import format_event, run_events
from tests import jobs
from tests.concurrency import start

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def parse(chunk: str) -> tuple[str, Any, int] | None:
    """``(event, data, id)`` of one SSE chunk; None for a comment."""
    if chunk.startswith(":"):
        return None
    fields = dict(line.split(": ", 1) for line in chunk.strip().splitlines())
    return fields["event"], json.loads(fields["data"]), int(fields["id"])


def collect(stream, until_event: str = "end") -> list[tuple[str, Any, int]]:
    events = []
    for chunk in stream:
        parsed = parse(chunk)
        if parsed is not None:
            events.append(parsed)
            if parsed[0] == until_event:
                break
    return events


def test_format_event__one_data_line_with_id():
    assert format_event("log", {"a": "x\ny"}, 7) == 'id: 7\nevent: log\ndata: {"a":"x\\ny"}\n\n'


def test_run_events__snapshot_then_each_change_then_end():
    jobs.FLAGS["gate"] = threading.Event()
    jobs.FLAGS["gate:entered"] = threading.Event()
    run = jobs.gated.trigger()
    stream = run_events(Run.objects.all(), run.pk, poll_interval=0.01, progress_interval=0)

    snapshot = parse(next(stream))
    assert snapshot is not None
    assert snapshot[0] == "snapshot"
    assert snapshot[1]["status"] == "pending"
    assert snapshot[1]["id"] == str(run.pk)

    worker = start(process_next)
    assert jobs.FLAGS["gate:entered"].wait(20)
    jobs.FLAGS["gate"].set()
    events = collect(stream)
    assert worker.outcome().status == "completed"

    names = [event for event, _data, _id in events]
    assert names[-1] == "end"
    assert events[-1][1] == {"status": "completed"}
    steps = [data["name"] for event, data, _id in events if event == "step"]
    assert steps == ["first", "gate", "last"]
    statuses = [data["status"] for event, data, _id in events if event == "status"]
    assert statuses[-1] == "completed"
    ids = [snapshot[2]] + [event_id for _e, _d, event_id in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_run_events__logs_and_progress():
    run = jobs.logs_and_progress.trigger()
    assert process_next().status == "completed"
    # A finished run: snapshot, then end at once.
    events = collect(run_events(Run.objects.all(), run.pk, poll_interval=0.01))
    assert [e for e, _d, _i in events] == ["snapshot", "end"]
    assert events[0][1]["progress"] == {"current": 2, "total": 2, "message": "all done"}


def test_run_events__logs_progress_and_steps_as_they_happen():
    jobs.FLAGS["gate"] = threading.Event()
    jobs.FLAGS["gate:entered"] = threading.Event()
    run = jobs.three_steps.trigger({})
    stream = run_events(Run.objects.all(), run.pk, poll_interval=0.01, progress_interval=0)
    assert parse(next(stream))[0] == "snapshot"
    assert process_next().status == "completed"
    events = collect(stream)
    kinds = [e for e, _d, _i in events]
    assert kinds.count("step") == 3
    assert {"event": "log", "message": "finished"} in [
        {"event": e, "message": d.get("message")} for e, d, _i in events if e == "log"
    ]
    progress = [d for e, d, _i in events if e == "progress"]
    assert progress[-1] == {"current": 3, "total": 3, "message": "done"}


def test_run_events__cancelled_run_ends_with_cancelled():
    run = jobs.noop.trigger()
    stream = run_events(Run.objects.all(), run.pk, poll_interval=0.01)
    assert parse(next(stream))[0] == "snapshot"
    cancel_run(run.pk)
    events = collect(stream)
    assert events[-1] == ("end", {"status": "cancelled"}, events[-1][2])


def test_run_events__deleted_or_hidden_run_ends():
    run = jobs.noop.trigger()
    events = collect(run_events(Run.objects.none(), run.pk, poll_interval=0.01))
    assert [(e, d) for e, d, _i in events] == [("end", {"status": "deleted"})]


def test_run_events__keepalive_comments_while_nothing_happens():
    run = jobs.noop.trigger()
    stream = run_events(Run.objects.all(), run.pk, poll_interval=0.01, keepalive=0.02)
    assert parse(next(stream))[0] == "snapshot"
    assert next(stream) == ": keep-alive\n\n"


def test_run_events__stops_after_max_seconds():
    run = jobs.noop.trigger()
    chunks = list(run_events(Run.objects.all(), run.pk, poll_interval=0.01, max_seconds=0.05))
    assert parse(chunks[0])[0] == "snapshot"
    assert all(parse(c) is None for c in chunks[1:])
