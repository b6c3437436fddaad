"""``GET /durably/runs/{id}/events`` end to end: the real URLconf, a staff session, and a run
advanced by a real ``durably_worker`` process (so every change crosses a process boundary)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from tests import jobs
from tests.acceptance.processes import Workers

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]


def parse(chunk: bytes) -> tuple[str, Any] | None:
    text = chunk.decode()
    if text.startswith(":"):
        return None
    fields = dict(line.split(": ", 1) for line in text.strip().splitlines())
    return fields["event"], json.loads(fields["data"])


def test_events__follow_a_run_advanced_by_a_worker_process(
    workers: Workers, operator: Any, settings: Any
) -> None:
    settings.DURABLY_STREAM_POLL_INTERVAL = 0.02
    settings.DURABLY_STREAM_PROGRESS_INTERVAL = 0
    client = Client()
    client.force_login(operator)
    run = jobs.three_steps.trigger({"x": 1})

    response = client.get(f"/durably/runs/{run.pk}/events")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    chunks = iter(response.streaming_content)  # type: ignore[attr-defined]
    first = parse(next(chunks))
    assert first is not None
    assert first[0] == "snapshot"
    assert first[1]["status"] == "pending"

    workers.start("--concurrency", "1", "--poll-interval", "0.1")
    events = []
    for chunk in chunks:  # ends by itself once the run is finished (or after max seconds)
        parsed = parse(chunk)
        if parsed is not None:
            events.append(parsed)
    response.close()

    kinds = [kind for kind, _data in events]
    assert kinds[-1] == "end"
    assert events[-1][1] == {"status": "completed"}
    assert [data["name"] for kind, data in events if kind == "step"] == ["a", "b", "c"]
    assert "completed" in [data["status"] for kind, data in events if kind == "status"]
    assert any(kind == "log" and data["message"] == "finished" for kind, data in events)
    assert [data for kind, data in events if kind == "progress"][-1] == {
        "current": 3,
        "total": 3,
        "message": "done",
    }


def test_events__unknown_or_forbidden_run(operator: Any, make_user: Any) -> None:
    run = jobs.noop.trigger()
    client = Client()
    client.force_login(operator)
    assert (
        client.get("/durably/runs/00000000-0000-0000-0000-000000000000/events").status_code == 404
    )
    nobody = Client()
    assert nobody.get(f"/durably/runs/{run.pk}/events").status_code in (401, 403)
