"""The wake-up notifications workers LISTEN for: sent on commit by whatever makes a run claimable
(a trigger, a batch, a resume), once per queue, and never for a transaction that rolled back.

A test connection LISTENs on the channel. Notifications arrive in commit order, so "nothing for the
rolled-back trigger" is checked by committing a marker trigger afterwards and reading up to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connections, transaction

from django_durably import cancel_run, resume_run
from django_durably.jobs import TriggerItem
from django_durably.models import Run
from django_durably.notifications import CHANNEL, Listener
from tests import jobs, routers
from tests.concurrency import start
from tests.postgres.statements import deallocate

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _runs_on_postgres(alias: str) -> Iterator[None]:
    routers.use(alias)
    yield
    routers.use("default")


@pytest.fixture
def listening(alias: str) -> Iterator[psycopg.Connection[Any]]:
    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        yield conn


def received_until(conn: psycopg.Connection[Any], last: str) -> list[str]:
    """The payloads that arrive up to and including ``last`` (which must arrive in time)."""
    payloads: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for notify in conn.notifies(timeout=deadline - time.monotonic(), stop_after=1):
            assert notify.channel == CHANNEL
            payloads.append(notify.payload)
        if payloads and payloads[-1] == last:
            return payloads
    raise AssertionError(f"no notification {last!r} within {DEADLINE}s; got {payloads}")


def test_a_trigger_wakes_its_queue(listening):
    jobs.noop.trigger(None, queue="mail")

    assert received_until(listening, "mail") == ["mail"]


def test_a_trigger_with_keys_wakes_its_queue(listening):
    # Keys are looked up first, so this trigger is a transaction of several statements.
    jobs.noop.trigger(None, queue="mail", idempotency_key="k1", concurrency_key="c1")

    assert received_until(listening, "mail") == ["mail"]


def test_a_batch_wakes_each_of_its_queues_once(listening):
    jobs.noop.trigger_many(
        [TriggerItem(input=n, queue=queue) for n, queue in enumerate(["b", "a", "b", "a", "b"])]
    )
    jobs.noop.trigger(None, queue="marker")

    received = received_until(listening, "marker")

    assert sorted(received[:-1]) == ["a", "b"]


def test_an_idempotent_hit_wakes_nobody(listening):
    jobs.noop.trigger(None, queue="mail", idempotency_key="k1")
    assert received_until(listening, "mail") == ["mail"]

    jobs.noop.trigger(None, queue="mail", idempotency_key="k1")
    jobs.noop.trigger(None, queue="marker")

    assert received_until(listening, "marker") == ["marker"]


def test_a_trigger_inside_a_transaction_wakes_on_commit(listening, alias):
    with transaction.atomic(using=alias):
        jobs.noop.trigger(None, queue="mail")
        # Another connection's trigger commits first and is heard first: "mail" has not been sent.
        start(jobs.noop.trigger, None, queue="marker").outcome()
        assert received_until(listening, "marker") == ["marker"]

    assert received_until(listening, "mail") == ["mail"]


def test_a_rolled_back_trigger_wakes_nobody(listening, alias):
    with pytest.raises(ZeroDivisionError), transaction.atomic(using=alias):
        jobs.noop.trigger(None, queue="mail")
        jobs.noop.trigger_many([TriggerItem(input=1, queue="mail2")])
        1 / 0  # noqa: B018
    jobs.noop.trigger(None, queue="marker")

    assert received_until(listening, "marker") == ["marker"]


def test_a_resume_wakes_the_runs_queue(listening):
    run = jobs.noop.trigger(None, queue="mail")
    assert received_until(listening, "mail") == ["mail"]
    cancel_run(run.pk)

    resume_run(run.pk)

    assert received_until(listening, "mail") == ["mail"]


def test_the_workers_listener_is_woken_by_a_trigger(alias):
    wake = threading.Event()
    listener = Listener(alias, wake, check_interval=0.05).start()
    try:
        assert listener.connected.wait(DEADLINE)
        assert wake.wait(DEADLINE)  # a (re)connect wakes the worker too, just after `connected`
        wake.clear()

        jobs.noop.trigger(None)

        assert wake.wait(DEADLINE)
    finally:
        listener.stop()


def test_a_trigger_whose_prepared_insert_a_pooler_lost_still_creates_and_wakes(
    listening, alias, preparing_restored, caplog
):
    jobs.noop.trigger(None, queue="mail")  # prepares the insert on this connection
    assert received_until(listening, "mail") == ["mail"]
    assert deallocate(alias, "%INSERT INTO durably_run%") == 1

    with caplog.at_level("WARNING", logger="django_durably.postgres"):
        run = jobs.noop.trigger(None, queue="mail")

    assert received_until(listening, "mail") == ["mail"]
    assert Run.objects.using(alias).get(pk=run.pk).status == "pending"
    assert "DURABLY_PREPARE_STATEMENTS = False" in caplog.text
