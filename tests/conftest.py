from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from django.conf import settings
from django.db import connections

from tests import jobs, routers
from tests.concurrency import start


@pytest.fixture(autouse=True)
def _reset_job_state() -> Iterator[None]:
    jobs.CALLS.clear()
    jobs.FLAGS.clear()
    yield
    jobs.CALLS.clear()
    jobs.FLAGS.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def db_alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per database: the durably app is routed to it for the test's duration."""
    alias = "default" if request.param == "sqlite" else "postgres"
    wanted = os.environ.get("DURABLY_TEST_DATABASES", "sqlite,postgres").split(",")
    if request.param not in wanted:
        pytest.skip(f"{request.param} is not in DURABLY_TEST_DATABASES")
    if alias not in settings.DATABASES:
        pytest.skip(settings.POSTGRES_SKIP_REASON or "PostgreSQL is not configured")
    routers.use(alias)
    yield alias
    routers.use("default")


# -- signals -----------------------------------------------------------------------------------


class Sent(NamedTuple):
    """One signal as a receiver got it: its name, its keyword arguments (``signal`` left out), and
    what ``observe`` saw when it was sent (``"in transaction!"`` if it was sent before the write it
    describes committed)."""

    name: str
    kwargs: dict[str, Any]
    seen: Any


IN_TRANSACTION = "in transaction!"
_receivers = itertools.count()


@pytest.fixture
def on_signal() -> Iterator[Callable[[str, Callable[..., None]], None]]:
    """``on_signal("step_completed", receiver)``: connect ``receiver`` to that signal of
    ``django_durably.signals`` until the test ends."""
    from django_durably import signals

    connected: list[tuple[Any, str]] = []

    def connect(name: str, receiver: Callable[..., None]) -> None:
        uid = f"on_signal:{next(_receivers)}"
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=uid)
        connected.append((getattr(signals, name), uid))

    yield connect
    for signal, uid in connected:
        signal.disconnect(dispatch_uid=uid)


@pytest.fixture
def record_signals(
    on_signal: Callable[[str, Callable[..., None]], None],
) -> Callable[..., list[Sent]]:
    """``record_signals("run_cancelled", ...)``: a list that receives a :class:`Sent` for each of
    those signals sent until the test ends, in order. Receivers only record (and check the sender
    is ``Run``); the test asserts, so a failing check is never swallowed by a worker.

    With ``observe=fn``, ``fn(name, kwargs)`` runs on another thread (its own connection) at the
    moment of sending and its result is kept as ``seen``: what another process could see then.
    """
    from django_durably.models import Run

    def record(
        *names: str, observe: Callable[[str, dict[str, Any]], Any] | None = None
    ) -> list[Sent]:
        sent: list[Sent] = []

        def receiver_of(name: str) -> Callable[..., None]:
            def receiver(sender: Any, **kwargs: Any) -> None:
                kwargs.pop("signal")
                assert sender is Run
                if observe is None:
                    seen = None
                elif connections[routers.current()].in_atomic_block:
                    seen = IN_TRANSACTION
                else:
                    seen = start(observe, name, kwargs).outcome()
                sent.append(Sent(name, kwargs, seen))

            return receiver

        for name in names:
            on_signal(name, receiver_of(name))
        return sent

    return record


# -- gates ---------------------------------------------------------------------------------------


class Gate(NamedTuple):
    """A gate of the jobs in ``tests/jobs.py`` (``wait_for_gate``): a job sets ``entered`` on
    arriving and waits there until the test sets ``opened``."""

    opened: threading.Event
    entered: threading.Event


@pytest.fixture
def gates() -> Iterator[Callable[[str], Gate]]:
    """``gate, entered = gates("gate")``: the gate of that name (the same events on each call).
    Every gate is opened when the test ends, so no job thread is left waiting at one."""
    made: dict[str, Gate] = {}

    def gate(name: str) -> Gate:
        if name not in made:
            made[name] = Gate(threading.Event(), threading.Event())
            jobs.FLAGS[name], jobs.FLAGS[f"{name}:entered"] = made[name]
        return made[name]

    yield gate
    for opened, _entered in made.values():
        opened.set()


# -- HTTP API ----------------------------------------------------------------------------------

RUN_PERMISSIONS = (
    "view_run",
    "add_run",
    "cancel_run",
    "resume_run",
    "retrigger_run",
    "delete_run",
)


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    """``make_user("acme-ops", "view_run", ...)``: a staff user with those ``durably`` permissions
    (``is_staff=False`` or ``is_superuser=True`` as keyword arguments)."""
    from django.contrib.auth.models import Permission

    def make(username: str, *codenames: str, **fields: Any) -> Any:
        fields.setdefault("is_staff", True)
        # No password: hashing one is slow, and tests log in with force_login.
        user = django_user_model.objects.create_user(username=username, **fields)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="durably", codename__in=codenames)
        )
        return django_user_model.objects.get(pk=user.pk)  # a fresh copy: no permission cache

    return make


@pytest.fixture
def operator(make_user: Callable[..., Any]) -> Any:
    """A staff user holding every run permission."""
    return make_user("operator", *RUN_PERMISSIONS)


@pytest.fixture
def api() -> Any:
    """ninja's test client for the durably router (pass ``user=`` to each request)."""
    from ninja.testing import TestClient

    from django_durably.api import router

    return TestClient(router)
