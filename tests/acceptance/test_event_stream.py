"""``GET /durably/runs/{id}/events`` end to end: the real URLconf, a staff session, and a run
advanced by a real ``durably_worker`` process (so every change crosses a process boundary)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer
from django.db import connections
from django.test import Client
from django.test.testcases import QuietWSGIRequestHandler

from django_durably.stream import open_streams
from tests import jobs
from tests.acceptance.processes import Workers
from tests.api_hooks import API_KEY
from tests.concurrency import wait_until

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


# -- issue 13, item 1: many streams through a real server --------------------------------------

STREAMS = 30
ROLE_CONNECTION_LIMIT = 6  # far fewer than the streams: each stream used to hold one


@pytest.fixture
def server() -> Iterator[str]:
    """Django's threaded development server (one thread per request, as runserver) on a free
    port, serving the test settings' URLconf."""
    httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietWSGIRequestHandler, allow_reuse_address=False)
    httpd.set_app(WSGIHandler())
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture
def limited_role(db_alias: str) -> Iterator[str | None]:
    """On PostgreSQL: connect the ``postgres`` alias as a role allowed only
    ROLE_CONNECTION_LIMIT connections (a superuser has no limit) and yield the role's name; on
    SQLite, ``None``. Roles are created and counted on a superuser connection of its own."""
    if db_alias != "postgres":
        yield None
        return
    role = f"durably_streams_{os.getpid()}"
    database = connections["postgres"].settings_dict
    with superuser(database) as cursor:
        cursor.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {ROLE_CONNECTION_LIMIT}")
        cursor.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        cursor.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    owner = database["USER"]
    connections["postgres"].close()
    database["USER"] = role  # every thread's next connection to the alias (wrappers share it)
    try:
        yield role
    finally:
        connections["postgres"].close()
        database["USER"] = owner
        with superuser(database) as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
            )
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


@contextlib.contextmanager
def superuser(database: dict[str, Any]) -> Iterator[Any]:
    """A cursor of a fresh connection to the test database as the superuser of the settings."""
    import psycopg

    with psycopg.connect(
        settings.POSTGRES_URL, dbname=database["NAME"], autocommit=True
    ) as connection:
        yield connection.cursor()


def role_connections(role: str) -> int:
    with superuser(connections["postgres"].settings_dict) as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [role])
        (count,) = cursor.fetchone()
    return int(count)


def open_stream(address: str, run_id: Any) -> tuple[socket.socket, Any]:
    """Open a run's event stream and read its snapshot; the socket stays open."""
    connection = http.client.HTTPConnection(address, timeout=10)
    connection.request("GET", f"/durably/runs/{run_id}/events", headers={"X-API-Key": API_KEY})
    sock = connection.sock
    response = connection.getresponse()
    assert response.status == 200, response.read()
    lines = [response.readline() for _ in range(4)]  # id, event, data, blank
    assert lines[1] == b"event: snapshot\n", lines
    return sock, response


def get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        connection.request("GET", path, headers={"X-API-Key": API_KEY})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_events__many_streams_share_one_connection_are_capped_and_notice_clients_leaving(
    server: str, limited_role: str | None, settings: Any
) -> None:  # noqa: F811 - pytest's settings fixture shadows django.conf.settings here
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.DURABLY_API_AUTH = "tests.api_hooks.ApiKey"
    settings.DURABLY_STREAM_POLL_INTERVAL = 0.1
    settings.DURABLY_STREAM_KEEPALIVE = 60  # no keep-alive write to notice a client by
    settings.DURABLY_STREAM_MAX_PER_PROCESS = STREAMS
    run_ids = [jobs.noop.trigger(i).pk for i in range(STREAMS + 1)]
    connections["postgres" if limited_role else "default"].close()  # not the streams' own

    streams = [open_stream(server, run_id) for run_id in run_ids[:STREAMS]]
    held = role_connections(limited_role) if limited_role else None
    answers = [get(server, "/durably/runs?limit=5")[0] for _ in range(10)]
    refused = get(server, f"/durably/runs/{run_ids[-1]}/events")

    assert open_streams() == STREAMS
    if limited_role:
        assert held is not None and held <= 1, f"{held} connections for {STREAMS} streams"
    assert answers == [200] * 10
    status, headers, body = refused
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert json.loads(body) == {
        "detail": "Too many event streams are open; try again later.",
        "code": "too_many_streams",
    }

    left_at = time.monotonic()
    for sock, response in streams:  # the clients go away
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        response.close()
    wait_until(lambda: open_streams() == 0, timeout=5, interval=0.01, what="streams to end")
    noticed_after = time.monotonic() - left_at
    if limited_role:
        wait_until(
            lambda: role_connections(limited_role) == 0, timeout=5, what="the poller to stop"
        )
    print(
        f"{STREAMS} streams: {held} connection(s); all clients noticed gone in {noticed_after:.2f}s"
    )
    assert noticed_after < 1.0  # a poll interval (0.1 s) and the server's threads, not 15 s
