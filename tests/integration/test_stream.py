"""The run event stream (``django_durably.stream``), read while a worker thread advances the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from django_durably import cancel_run, process_next
from django_durably.models import Run
from django_durably.poller import poller_for
from django_durably.stream import PREVIEW_BYTES, format_event, open_streams, run_events
from tests import jobs
from tests.concurrency import start, wait_until

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


@pytest.fixture(autouse=True)
def _streams_closed() -> Iterator[None]:
    """Every stream a test opens is closed by its end: none is left watching or holding a slot."""
    yield
    wait_until(lambda: open_streams() == 0, timeout=5, what="streams to close")
    pollers = [poller_for(alias) for alias in ("default", "postgres")]
    wait_until(lambda: all(p.watching == 0 for p in pollers), timeout=5, what="watchers to leave")


def test_format_event__one_data_line_with_id():
    assert format_event("log", {"a": "x\ny"}, 7) == 'id: 7\nevent: log\ndata: {"a":"x\\ny"}\n\n'


def test_format_event__times_in_iso_8601_as_the_api_has_them():
    moment = datetime(2026, 12, 6, 17, 48, 36, 194000, tzinfo=UTC)

    assert format_event("x", {"at": moment}, 1) == (
        'id: 1\nevent: x\ndata: {"at":"2026-12-06T17:48:36.194Z"}\n\n'
    )


def test_run_events__snapshot_then_each_change_then_end(gates):
    gate, entered = gates("gate")
    run = jobs.gated.trigger()
    stream = run_events(Run.objects.all(), run.pk, poll_interval=0.01, progress_interval=0)

    snapshot = parse(next(stream))
    assert snapshot is not None
    assert snapshot[0] == "snapshot"
    assert snapshot[1]["status"] == "pending"
    assert snapshot[1]["id"] == str(run.pk)

    worker = start(process_next)
    assert entered.wait(20)
    gate.set()
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
    with closing(
        run_events(Run.objects.all(), run.pk, poll_interval=0.01, keepalive=0.02)
    ) as stream:
        assert parse(next(stream))[0] == "snapshot"
        assert next(stream) == ": keep-alive\n\n"


def test_run_events__stops_after_max_seconds():
    run = jobs.noop.trigger()
    chunks = list(run_events(Run.objects.all(), run.pk, poll_interval=0.01, max_seconds=0.05))
    assert parse(chunks[0])[0] == "snapshot"
    assert all(parse(c) is None for c in chunks[1:])


# -- issue 13, item 11: order, previews, log lines ---------------------------------------------


def test_run_events__the_leased_status_comes_before_the_attempts_steps(gates):
    gate, entered = gates("gate")
    run = jobs.gated.trigger()
    with closing(run_events(Run.objects.all(), run.pk, poll_interval=0.3)) as stream:
        assert parse(next(stream))[0] == "snapshot"
        worker = start(process_next)
        assert entered.wait(20)  # claimed, and step "first" written

        first_two = [parse(next(stream)) for _ in range(2)]
        gate.set()
        collect(stream)
    worker.outcome()

    assert [(event, data.get("status"), data.get("name")) for event, data, _ in first_two] == [
        ("status", "leased", None),
        ("step", "completed", "first"),
    ]


def test_run_events__large_outputs_are_previewed():
    run = jobs.echo.trigger({"step": "x" * (PREVIEW_BYTES * 2), "result": "small"})
    with closing(run_events(Run.objects.all(), run.pk, poll_interval=0.01)) as stream:
        assert parse(next(stream))[0] == "snapshot"
        assert process_next().status == "completed"
        events = collect(stream)

    (step,) = [data for event, data, _ in events if event == "step"]
    assert step["output"] is None
    assert step["output_truncated"] is True
    assert step["output_preview"] == ('"' + "x" * PREVIEW_BYTES)[:PREVIEW_BYTES]
    assert step["started_at"].endswith("Z") and "T" in step["started_at"]


def test_run_events__small_outputs_are_sent_whole():
    run = jobs.echo.trigger({"step": [1, 2], "result": "small"})
    with closing(run_events(Run.objects.all(), run.pk, poll_interval=0.01)) as stream:
        next(stream)
        process_next()
        events = collect(stream)

    (step,) = [data for event, data, _ in events if event == "step"]
    assert (step["output"], step["output_truncated"]) == ([1, 2], False)
    assert "output_preview" not in step


def test_run_events__a_log_line_outside_a_step_has_an_empty_step_name(gates):
    gate, entered = gates("report")
    run = jobs.reports_at_a_gate.trigger()
    with closing(run_events(Run.objects.all(), run.pk, poll_interval=0.01)) as stream:
        next(stream)
        worker = start(process_next)
        assert entered.wait(20)
        gate.set()
        events = collect(stream)
    worker.outcome()

    logs = [data for event, data, _ in events if event == "log"]
    assert logs[0]["message"] == "before the gate"
    assert logs[0]["step_name"] == ""
    assert "T" in logs[0]["created_at"]


# -- issue 13, item 1: one poller, a cap per process -------------------------------------------


def test_run_events__streams_share_the_processes_poller(db_alias):
    runs = [jobs.noop.trigger(i) for i in range(5)]
    streams = [run_events(Run.objects.all(), run.pk, poll_interval=0.01) for run in runs]
    for stream in streams:
        assert parse(next(stream))[0] == "snapshot"
    threads = [start(collect, stream) for stream in streams]  # each waits for its run's events

    wait_until(lambda: poller_for(db_alias).watching == 5, what="five watchers")
    assert poller_for(db_alias).running
    for run in runs:
        cancel_run(run.pk)
    ends = [thread.outcome()[-1][:2] for thread in threads]
    for stream in streams:
        stream.close()

    assert ends == [("end", {"status": "cancelled"})] * 5
    wait_until(lambda: not poller_for(db_alias).running, what="the idle poller to stop")


def test_events__over_the_cap_503_with_retry_after(operator, settings):
    settings.DURABLY_STREAM_MAX_PER_PROCESS = 2
    runs = [jobs.noop.trigger(i) for i in range(4)]
    client = Client()
    client.force_login(operator)

    first, second, refused = (client.get(f"/durably/runs/{run.pk}/events") for run in runs[:3])
    assert (first.status_code, second.status_code) == (200, 200)
    assert refused.status_code == 503
    assert refused["Retry-After"] == "5"
    assert refused.json() == {
        "detail": "Too many event streams are open; try again later.",
        "code": "too_many_streams",
    }
    assert open_streams() == 2

    first.close()  # a client that left: the server closes its response
    fourth = client.get(f"/durably/runs/{runs[3].pk}/events")

    assert fourth.status_code == 200
    for response in (second, fourth):
        response.close()
    assert open_streams() == 0
