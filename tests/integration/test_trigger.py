"""Triggering runs: dispositions, idempotency, concurrency keys, batches, labels and bad input.

Every test runs on SQLite and on PostgreSQL (``db_alias`` is autouse in tests/integration).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

import django_durably
from django_durably.exceptions import (
    InvalidInput,
    InvalidLabels,
    InvalidRunAfter,
    InvalidTrigger,
    JobNotFound,
    PendingRunExists,
)
from django_durably.jobs import TriggerItem
from django_durably.models import Run, RunStatus
from tests import jobs
from tests.concurrency import at_once
from tests.factories import move_to

pytestmark = pytest.mark.django_db(databases="__all__")
transactional = pytest.mark.django_db(transaction=True, databases="__all__")

RACE_ROUNDS = 20


@pytest.fixture
def triggered(record_signals: Any) -> list[Any]:
    """``run_triggered`` as sent, in order (``runs_of(triggered)``: the runs it was sent with)."""
    return record_signals("run_triggered")


def runs_of(sent: list[Any]) -> list[Run]:
    return [kwargs["run"] for _, kwargs, _ in sent]


# -- trigger -------------------------------------------------------------------------------------


def test_trigger__returns_a_pending_created_run(db_alias):
    run = jobs.noop.trigger({"x": 1})
    assert run.disposition == "created"
    stored = Run.objects.get()
    assert stored.pk == run.pk
    assert stored.job_name == "tests.jobs.noop"
    assert stored.status == RunStatus.PENDING
    assert stored.input == {"x": 1}
    assert stored.output is None
    assert stored.labels == {}
    assert stored.idempotency_key is None
    assert stored.concurrency_key is None
    assert stored.attempt == 0
    assert Run.objects.using(db_alias).filter(pk=run.pk).exists()


@pytest.mark.parametrize("how", ["trigger", "trigger_many"])
def test_trigger__stores_every_column_as_a_new_model_instance_would(db_alias, how):
    # PostgreSQL inserts runs with a hand-written statement, not the ORM: a column it forgot, or a
    # model default it got wrong, shows up here as a field that differs from an unsaved Run's.
    options = {"queue": "q", "priority": 3, "labels": {"team": "a"}, "idempotency_key": "k"}
    if how == "trigger":
        run = jobs.noop.trigger({"x": [1, "two"]}, **options)
    else:
        [run] = jobs.noop.trigger_many([TriggerItem(input={"x": [1, "two"]}, **options)])
    stored = Run.objects.get(pk=run.pk)
    expected = Run(
        pk=run.pk,
        job_name="tests.jobs.noop",
        input={"x": [1, "two"]},
        queue="q",
        priority=3,
        labels={"team": "a"},
        idempotency_key="k",
    )

    database_clock = {"run_after", "created_at", "updated_at"}
    for field in Run._meta.concrete_fields:
        if field.name in database_clock:
            assert getattr(stored, field.attname) == getattr(run, field.attname), field.name
            assert getattr(stored, field.attname) == stored.created_at, field.name
        else:
            assert getattr(stored, field.attname) == getattr(expected, field.attname), field.name
            assert getattr(run, field.attname) == getattr(expected, field.attname), field.name
    assert run._state.adding is False
    assert run._state.db == db_alias


def test_trigger__defaults_for_queue_and_priority(db_alias):
    run = jobs.noop.trigger()
    stored = Run.objects.get(pk=run.pk)
    assert (stored.queue, stored.priority) == ("default", 0)
    assert stored.input is None


def test_trigger__defaults_come_from_settings(db_alias, settings):
    settings.DURABLY_DEFAULT_QUEUE = "bulk"
    settings.DURABLY_DEFAULT_PRIORITY = -3
    stored = Run.objects.get(pk=jobs.noop.trigger().pk)
    assert (stored.queue, stored.priority) == ("bulk", -3)


def test_trigger__options_override_the_job(db_alias):
    run = jobs.noop.using(queue="slow", priority=2).trigger(queue="fast", priority=9)
    assert (run.queue, run.priority) == ("fast", 9)
    copy = jobs.noop.using(queue="slow", priority=2).trigger()
    assert Run.objects.values_list("queue", "priority").get(pk=copy.pk) == ("slow", 2)


def test_trigger__priority_zero_overrides_the_job(db_alias):
    run = jobs.noop.using(priority=5).trigger(priority=0)
    assert Run.objects.get(pk=run.pk).priority == 0


def test_trigger__run_after_defaults_to_the_database_clock(db_alias):
    before = timezone.now()
    run = jobs.noop.trigger()
    stored = Run.objects.get(pk=run.pk)
    assert isinstance(stored.run_after, datetime)
    assert run.run_after == stored.run_after  # the returned run carries the stored value
    # Both columns default to the database's NOW() in the same INSERT.
    assert stored.run_after == stored.created_at
    assert abs(stored.run_after - before) < timedelta(minutes=1)


def test_trigger__run_after_is_stored(db_alias):
    when = timezone.now() + timedelta(hours=2)
    run = jobs.noop.trigger(run_after=when)
    assert Run.objects.get(pk=run.pk).run_after == when


@transactional
def test_trigger__future_run_after_is_not_claimed(db_alias):
    run = jobs.noop.trigger(run_after=timezone.now() + timedelta(hours=1))
    assert django_durably.process_one() is False
    assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING


@transactional
def test_trigger__past_run_after_is_claimed(db_alias):
    run = jobs.noop.trigger({"n": 1}, run_after=timezone.now() - timedelta(seconds=5))
    assert django_durably.process_one() is True
    stored = Run.objects.get(pk=run.pk)
    assert stored.status == RunStatus.COMPLETED
    assert stored.output == {"n": 1}


def test_trigger__by_name(db_alias):
    run = django_durably.trigger("tests.three_steps", {"x": 1}, labels={"a": "b"})
    assert run.disposition == "created"
    assert Run.objects.get().job_name == "tests.three_steps"
    assert Run.objects.get().labels == {"a": "b"}


def test_trigger__pydantic_input_is_stored_as_json(db_alias):
    run = jobs.greet.trigger({"name": "Ada"})
    assert Run.objects.get(pk=run.pk).input == {"name": "Ada", "times": 1}
    again = jobs.greet.trigger(jobs.Greeting(name="Bob", times=2))
    assert Run.objects.get(pk=again.pk).input == {"name": "Bob", "times": 2}


# -- idempotency ---------------------------------------------------------------------------------


def test_trigger_idempotency__same_key_returns_the_existing_run(db_alias):
    first = jobs.noop.trigger({"n": 1}, idempotency_key="k")
    second = jobs.noop.trigger({"n": 2}, idempotency_key="k")
    assert first.disposition == "created"
    assert second.disposition == "idempotent"
    assert second.pk == first.pk
    assert second.input == {"n": 1}
    assert Run.objects.count() == 1


def test_trigger_idempotency__is_per_job_name(db_alias):
    first = jobs.noop.trigger(idempotency_key="shared")
    other = jobs.three_steps.trigger({}, idempotency_key="shared")
    assert other.disposition == "created"
    assert other.pk != first.pk
    assert Run.objects.count() == 2


@pytest.mark.parametrize(
    "status",
    [RunStatus.LEASED, RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED],
)
def test_trigger_idempotency__hit_whatever_the_status(db_alias, status):
    first = move_to(jobs.noop.trigger(idempotency_key="k"), status)
    again = jobs.noop.trigger(idempotency_key="k")
    assert again.disposition == "idempotent"
    assert again.pk == first.pk
    assert again.status == status
    assert Run.objects.count() == 1


def test_trigger_idempotency__wins_over_a_concurrency_conflict(db_alias):
    first = jobs.noop.trigger(idempotency_key="k", concurrency_key="c")
    again = jobs.noop.trigger(idempotency_key="k", concurrency_key="c")
    assert again.disposition == "idempotent"
    assert again.pk == first.pk


@transactional
def test_trigger_idempotency__hit_sends_no_signal(db_alias, triggered):
    first = jobs.noop.trigger(idempotency_key="k")
    assert [r.pk for r in runs_of(triggered)] == [first.pk]
    jobs.noop.trigger(idempotency_key="k")
    move_to(first, RunStatus.COMPLETED)
    jobs.noop.trigger(idempotency_key="k")
    assert [r.pk for r in runs_of(triggered)] == [first.pk]


# -- concurrency keys ----------------------------------------------------------------------------


def test_trigger_concurrency__second_pending_raises(db_alias):
    first = jobs.noop.trigger(concurrency_key="c")
    with pytest.raises(PendingRunExists) as caught:
        jobs.noop.trigger(concurrency_key="c")
    assert caught.value.run_id == first.pk
    assert caught.value.job_name == "tests.jobs.noop"
    assert caught.value.concurrency_key == "c"
    assert str(first.pk) in str(caught.value)
    assert Run.objects.count() == 1


def test_trigger_concurrency__job_key_from_input(db_alias):
    first = jobs.per_user.trigger({"user": 7})
    assert first.concurrency_key == "user:7"
    jobs.per_user.trigger({"user": 8})
    with pytest.raises(PendingRunExists) as caught:
        jobs.per_user.trigger({"user": 7})
    assert caught.value.run_id == first.pk
    assert Run.objects.count() == 2


def test_trigger_concurrency__skip_returns_the_pending_run(db_alias):
    first = jobs.singleton.trigger({"n": 1})
    again = jobs.singleton.trigger({"n": 2}, coalesce="skip")
    assert again.disposition == "coalesced"
    assert again.pk == first.pk
    assert again.input == {"n": 1}
    assert Run.objects.count() == 1


def test_trigger_concurrency__key_is_per_job_name(db_alias):
    jobs.noop.trigger(concurrency_key="singleton")
    other = jobs.singleton.trigger()
    assert other.disposition == "created"
    assert Run.objects.count() == 2


@pytest.mark.parametrize(
    "status",
    [RunStatus.LEASED, RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED],
)
def test_trigger_concurrency__only_pending_runs_conflict(db_alias, status):
    first = move_to(jobs.singleton.trigger(), status)
    second = jobs.singleton.trigger()
    assert second.disposition == "created"
    assert second.pk != first.pk
    with pytest.raises(PendingRunExists) as caught:
        jobs.singleton.trigger()
    assert caught.value.run_id == second.pk


@transactional
def test_trigger_concurrency__after_completion_a_new_run_is_created(db_alias):
    first = jobs.singleton.trigger()
    assert django_durably.process_one() is True
    assert Run.objects.get(pk=first.pk).status == RunStatus.COMPLETED
    second = jobs.singleton.trigger()
    assert second.disposition == "created"
    assert second.pk != first.pk
    assert Run.objects.filter(status=RunStatus.PENDING).get().pk == second.pk


@transactional
def test_trigger_concurrency__coalesced_sends_run_coalesced_not_run_triggered(
    db_alias, triggered, record_signals
):
    coalesced = record_signals("run_coalesced")

    first = jobs.singleton.trigger()
    again = jobs.singleton.trigger(coalesce="skip")
    with pytest.raises(PendingRunExists):
        jobs.singleton.trigger()

    assert [r.pk for r in runs_of(triggered)] == [first.pk]
    assert again.pk == first.pk
    assert [
        (c["run"].pk, c["run"].disposition, c["job_name"], c["concurrency_key"])
        for _, c, _ in coalesced
    ] == [(first.pk, "coalesced", jobs.singleton.name, "singleton")]


# -- trigger_many --------------------------------------------------------------------------------


def test_trigger_many__creates_every_run_in_order(db_alias):
    runs = jobs.noop.trigger_many([{"n": 0}, {"n": 1}, {"n": 2}])
    assert [r.disposition for r in runs] == ["created"] * 3
    assert [r.input for r in runs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert len({r.pk for r in runs}) == 3
    assert set(Run.objects.values_list("pk", flat=True)) == {r.pk for r in runs}


def test_trigger_many__empty_creates_nothing(db_alias):
    assert jobs.noop.trigger_many([]) == []
    assert Run.objects.count() == 0


def test_trigger_many__accepts_items_and_plain_inputs(db_alias):
    when = timezone.now() + timedelta(minutes=5)
    runs = jobs.noop.trigger_many(
        [
            {"plain": True},
            TriggerItem(
                input={"item": True},
                idempotency_key="i",
                concurrency_key="c",
                labels={"team": "a"},
                queue="q",
                priority=4,
                run_after=when,
            ),
            None,
        ]
    )
    plain, item, none = (Run.objects.get(pk=r.pk) for r in runs)
    assert plain.input == {"plain": True}
    assert (plain.queue, plain.priority, plain.labels) == ("default", 0, {})
    assert item.input == {"item": True}
    assert (item.idempotency_key, item.concurrency_key) == ("i", "c")
    assert (item.labels, item.queue, item.priority, item.run_after) == (
        {"team": "a"},
        "q",
        4,
        when,
    )
    assert none.input is None


def test_trigger_many__accepts_a_generator(db_alias):
    runs = jobs.noop.trigger_many({"n": n} for n in range(3))
    assert len(runs) == 3
    assert Run.objects.count() == 3


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({1, 2}, id="non-json-input"),
        pytest.param(TriggerItem(labels={"bad key": "v"}), id="bad-label"),
        pytest.param(TriggerItem(run_after=datetime(2030, 1, 1)), id="naive-run-after"),
        pytest.param(TriggerItem(priority=True), id="bad-priority"),
        pytest.param(TriggerItem(coalesce="maybe"), id="bad-coalesce"),  # type: ignore[arg-type]
    ],
)
def test_trigger_many__a_bad_item_creates_nothing(db_alias, bad):
    items = [{"n": 0}, {"n": 1}, bad, {"n": 3}]
    with pytest.raises(InvalidTrigger):
        jobs.noop.trigger_many(items)
    assert Run.objects.count() == 0


def test_trigger_many__schema_failure_in_position_three_creates_nothing(db_alias):
    items = [{"name": "a"}, {"name": "b"}, {"name": None}, {"name": "d"}]
    with pytest.raises(InvalidInput, match="name: Input should be a valid string"):
        jobs.greet.trigger_many(items)
    assert Run.objects.count() == 0


@pytest.mark.parametrize(
    ("bad", "error", "field"),
    [
        pytest.param({1, 2}, InvalidInput, "input", id="non-json-input"),
        pytest.param(TriggerItem(labels={"bad key": "v"}), InvalidLabels, "labels", id="label"),
        pytest.param(
            TriggerItem(run_after=datetime(2030, 1, 1)), InvalidRunAfter, "run_after", id="naive"
        ),
        pytest.param(TriggerItem(priority=True), InvalidTrigger, "priority", id="priority"),
        pytest.param(
            TriggerItem(idempotency_key=""), InvalidTrigger, "idempotency_key", id="empty-key"
        ),
    ],
)
def test_trigger_many__the_error_says_which_item_failed(db_alias, bad, error, field):
    items = [{"n": 0}, {"n": 1}, bad, {"n": 3}]

    with pytest.raises(error) as raised:
        jobs.noop.trigger_many(items)

    assert type(raised.value) is error
    assert raised.value.index == 2
    assert raised.value.field == field
    assert str(raised.value).startswith("Item 2 of the batch: ")
    assert [e["loc"][:2] for e in raised.value.errors] == [[2, field]]
    assert Run.objects.count() == 0


def test_trigger_many__a_schema_error_locates_each_field_under_the_item(db_alias):
    items = [{"name": "a"}, {"name": None, "times": "x"}]

    with pytest.raises(InvalidInput) as raised:
        jobs.greet.trigger_many(items)

    assert raised.value.index == 1
    assert str(raised.value).startswith(
        "Item 1 of the batch: Input of job 'tests.jobs.greet' does not match Greeting: "
    )
    assert [e["loc"] for e in raised.value.errors] == [[1, "input", "name"], [1, "input", "times"]]


def test_trigger__a_single_trigger_has_no_index(db_alias):
    with pytest.raises(InvalidLabels) as raised:
        jobs.noop.trigger(1, labels={"bad key": "v"})

    assert raised.value.index is None
    assert str(raised.value).startswith("Label key 'bad key' is invalid")
    assert raised.value.errors == [{"loc": ["labels"], "msg": str(raised.value)}]


def test_trigger_many__duplicate_idempotency_key_in_one_batch(db_alias):
    first, second = jobs.noop.trigger_many(
        [TriggerItem(input=1, idempotency_key="k"), TriggerItem(input=2, idempotency_key="k")]
    )
    assert (first.disposition, second.disposition) == ("created", "idempotent")
    assert second.pk == first.pk
    assert Run.objects.get().input == 1


def test_trigger_many__existing_idempotency_key_in_a_batch(db_alias):
    existing = jobs.noop.trigger(0, idempotency_key="k")
    runs = jobs.noop.trigger_many([1, TriggerItem(input=2, idempotency_key="k")])
    assert [r.disposition for r in runs] == ["created", "idempotent"]
    assert runs[1].pk == existing.pk
    assert Run.objects.count() == 2


def test_trigger_many__duplicate_concurrency_key_in_one_batch_raises(db_alias):
    with pytest.raises(PendingRunExists) as caught:
        jobs.noop.trigger_many(
            [
                TriggerItem(input=0),
                TriggerItem(input=1, concurrency_key="c"),
                TriggerItem(input=2, concurrency_key="c"),
            ]
        )
    assert caught.value.concurrency_key == "c"
    assert Run.objects.count() == 0


def test_trigger_many__duplicate_concurrency_key_in_one_batch_coalesces(db_alias):
    first, second = jobs.noop.trigger_many(
        [
            TriggerItem(input=1, concurrency_key="c"),
            TriggerItem(input=2, concurrency_key="c", coalesce="skip"),
        ]
    )
    assert (first.disposition, second.disposition) == ("created", "coalesced")
    assert second.pk == first.pk
    assert Run.objects.get().input == 1


def test_trigger_many__conflict_with_an_existing_run_rolls_back_the_batch(db_alias):
    existing = jobs.noop.trigger(0, concurrency_key="c")
    with pytest.raises(PendingRunExists) as caught:
        jobs.noop.trigger_many([1, 2, TriggerItem(input=3, concurrency_key="c"), 4])
    assert caught.value.run_id == existing.pk
    assert list(Run.objects.values_list("pk", flat=True)) == [existing.pk]


def test_trigger_many__coalesces_with_an_existing_run(db_alias):
    existing = jobs.noop.trigger(0, concurrency_key="c")
    runs = jobs.noop.trigger_many([1, TriggerItem(input=2, concurrency_key="c", coalesce="skip")])
    assert [r.disposition for r in runs] == ["created", "coalesced"]
    assert runs[1].pk == existing.pk
    assert Run.objects.count() == 2


@transactional
def test_trigger_many__signals_once_per_created_run_after_commit(db_alias, triggered):
    jobs.noop.trigger(0, idempotency_key="old")
    triggered.clear()
    runs = jobs.noop.trigger_many(
        [
            TriggerItem(input=1, idempotency_key="old"),
            TriggerItem(input=2, idempotency_key="new"),
            TriggerItem(input=3, idempotency_key="new"),
            TriggerItem(input=4),
        ]
    )
    assert [r.disposition for r in runs] == ["idempotent", "created", "idempotent", "created"]
    assert [r.pk for r in runs_of(triggered)] == [runs[1].pk, runs[3].pk]


@transactional
def test_trigger_many__failed_batch_sends_no_signal(db_alias, triggered):
    jobs.noop.trigger(0, concurrency_key="c")
    triggered.clear()
    with pytest.raises(PendingRunExists):
        jobs.noop.trigger_many([1, TriggerItem(input=2, concurrency_key="c")])
    assert triggered == []


# -- signals -------------------------------------------------------------------------------------


@transactional
def test_trigger_signal__sent_once_with_the_run(db_alias, triggered):
    run = jobs.noop.trigger({"a": 1})
    assert len(triggered) == 1
    assert runs_of(triggered)[0].pk == run.pk
    assert runs_of(triggered)[0].input == {"a": 1}


@transactional
def test_trigger_signal__waits_for_the_outer_commit(db_alias, triggered):
    with transaction.atomic(using=db_alias):
        run = jobs.noop.trigger()
        assert triggered == []
    assert [r.pk for r in runs_of(triggered)] == [run.pk]


@transactional
def test_trigger_signal__not_sent_when_the_outer_transaction_rolls_back(db_alias, triggered):
    with pytest.raises(RuntimeError), transaction.atomic(using=db_alias):
        jobs.noop.trigger()
        raise RuntimeError("roll back")
    assert triggered == []
    assert Run.objects.count() == 0


def test_trigger_signal__captured_on_commit(
    db_alias, triggered, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(using=db_alias, execute=True) as callbacks:
        run = jobs.noop.trigger()
        jobs.noop.trigger(concurrency_key="c")
        jobs.noop.trigger(concurrency_key="c", coalesce="skip")
    assert len(callbacks) == 2
    assert len(triggered) == 2
    assert runs_of(triggered)[0].pk == run.pk


# -- labels --------------------------------------------------------------------------------------


def test_with_labels__and_semantics(db_alias):
    both = jobs.noop.trigger(labels={"tenant": "acme", "env": "prod"})
    jobs.noop.trigger(labels={"tenant": "acme", "env": "dev"})
    jobs.noop.trigger(labels={"tenant": "other", "env": "prod"})
    jobs.noop.trigger()
    assert list(Run.objects.with_labels(tenant="acme", env="prod")) == [both]
    assert list(Run.objects.with_labels({"tenant": "acme"}, env="prod")) == [both]
    assert Run.objects.with_labels(tenant="acme").count() == 2
    assert Run.objects.with_labels(env="prod").count() == 2
    assert Run.objects.with_labels(tenant="acme", env="staging").count() == 0
    assert Run.objects.with_labels(missing="x").count() == 0
    assert Run.objects.with_labels().count() == 4
    assert Run.objects.with_labels({}).count() == 4


@pytest.mark.parametrize("key", ["team/region", "a.b", "7", "a-b_c", "A.b/7-x_"])
def test_with_labels__keys_that_are_not_identifiers(db_alias, key):
    match = jobs.noop.trigger(labels={key: "yes", "other": "1"})
    jobs.noop.trigger(labels={key: "no", "other": "1"})
    jobs.noop.trigger(labels={"other": "1"})
    if "." in key:
        # "a.b" is one key, not a path into {"a": {"b": ...}}.
        head, _, tail = key.partition(".")
        jobs.noop.trigger(labels={head: "yes", tail: "yes"})
    assert list(Run.objects.with_labels({key: "yes"})) == [match]
    assert list(Run.objects.with_labels({key: "yes", "other": "1"})) == [match]
    assert Run.objects.with_labels({key: "yes", "other": "2"}).count() == 0


def test_with_labels__values_match_exactly(db_alias):
    jobs.noop.trigger(labels={"n": "7"})
    jobs.noop.trigger(labels={"n": "07"})
    jobs.noop.trigger(labels={"n": ""})
    assert Run.objects.with_labels(n="7").count() == 1
    assert Run.objects.with_labels(n="").count() == 1
    assert Run.objects.with_labels(n="7 ").count() == 0


def test_with_labels__combines_with_other_filters(db_alias):
    wanted = jobs.noop.trigger(labels={"t": "a"}, queue="q1")
    jobs.noop.trigger(labels={"t": "a"}, queue="q2")
    assert list(Run.objects.filter(queue="q1").with_labels(t="a")) == [wanted]
    assert list(Run.objects.with_labels(t="a").filter(queue="q1")) == [wanted]


def test_trigger_labels__round_trip(db_alias):
    labels = {f"k{i}": f"v{i}" for i in range(32)} | {"team/region": "eu-1"}
    labels.pop("k31")
    run = jobs.noop.trigger(labels=labels)
    assert Run.objects.get(pk=run.pk).labels == labels


# -- bad input: a typed error, and no row --------------------------------------------------------


# The same jobs, typed Any: the calls below are wrong on purpose.
wrong: Any = jobs

BAD_TRIGGERS: list[Any] = [
    # (id, callable, error class, field, message fragment)
    (
        "non-json-set",
        lambda: wrong.noop.trigger({1, 2}),
        InvalidInput,
        "input",
        "JSON-serializable",
    ),
    (
        "non-json-nan",
        lambda: wrong.noop.trigger({"x": float("nan")}),
        InvalidInput,
        "input",
        "JSON",
    ),
    (
        "non-json-datetime",
        lambda: wrong.noop.trigger({"at": timezone.now()}),
        InvalidInput,
        "input",
        "Object of type datetime is not JSON serializable",
    ),
    ("non-json-key", lambda: wrong.noop.trigger({1: "a"}), InvalidInput, "input", "keys"),
    (
        "schema-missing-field",
        lambda: wrong.greet.trigger({"times": 2}),
        InvalidInput,
        "input",
        "does not match Greeting: name: Field required",
    ),
    (
        "schema-wrong-type",
        lambda: wrong.greet.trigger({"name": "x", "times": "many"}),
        InvalidInput,
        "input",
        "times: Input should be a valid integer",
    ),
    (
        "schema-not-an-object",
        lambda: wrong.greet.trigger("Ada"),
        InvalidInput,
        "input",
        "Greeting",
    ),
    (
        "label-key-space",
        lambda: wrong.noop.trigger(labels={"a b": "v"}),
        InvalidLabels,
        "labels",
        "Label key 'a b' is invalid",
    ),
    (
        "label-key-empty",
        lambda: wrong.noop.trigger(labels={"": "v"}),
        InvalidLabels,
        "labels",
        "Label key '' is invalid",
    ),
    (
        "label-key-unicode",
        lambda: wrong.noop.trigger(labels={"ünï": "v"}),
        InvalidLabels,
        "labels",
        "is invalid",
    ),
    (
        "label-key-quote",
        lambda: wrong.noop.trigger(labels={'a"b': "v"}),
        InvalidLabels,
        "labels",
        "is invalid",
    ),
    (
        "label-key-colon",
        lambda: wrong.noop.trigger(labels={"a:b": "v"}),
        InvalidLabels,
        "labels",
        "is invalid",
    ),
    (
        "label-key-too-long",
        lambda: wrong.noop.trigger(labels={"k" * 101: "v"}),
        InvalidLabels,
        "labels",
        "keys are 1-100 characters",
    ),
    (
        "label-key-not-string",
        lambda: wrong.noop.trigger(labels={7: "v"}),
        InvalidLabels,
        "labels",
        "Label key 7 is invalid",
    ),
    (
        "label-value-int",
        lambda: wrong.noop.trigger(labels={"k": 1}),
        InvalidLabels,
        "labels",
        "Label 'k' has value 1",
    ),
    (
        "label-value-none",
        lambda: wrong.noop.trigger(labels={"k": None}),
        InvalidLabels,
        "labels",
        "values are strings",
    ),
    (
        "label-value-nested",
        lambda: wrong.noop.trigger(labels={"k": {"nested": "v"}}),
        InvalidLabels,
        "labels",
        "values are strings",
    ),
    (
        "label-value-too-long",
        lambda: wrong.noop.trigger(labels={"k": "v" * 501}),
        InvalidLabels,
        "labels",
        "at most 500 characters",
    ),
    (
        "labels-not-a-dict",
        lambda: wrong.noop.trigger(labels=[("k", "v")]),
        InvalidLabels,
        "labels",
        "got list",
    ),
    (
        "labels-string",
        lambda: wrong.noop.trigger(labels="k=v"),
        InvalidLabels,
        "labels",
        "got str",
    ),
    (
        "too-many-labels",
        lambda: wrong.noop.trigger(labels={f"k{i}": "v" for i in range(33)}),
        InvalidLabels,
        "labels",
        "At most 32 labels",
    ),
    (
        "naive-run-after",
        lambda: wrong.noop.trigger(run_after=datetime(2030, 1, 1, 12)),
        InvalidRunAfter,
        "run_after",
        "got the naive datetime 2030-01-01T12:00:00",
    ),
    (
        "run-after-string",
        lambda: wrong.noop.trigger(run_after="2030-01-01T00:00:00Z"),
        InvalidRunAfter,
        "run_after",
        "got str",
    ),
    (
        "priority-bool",
        lambda: wrong.noop.trigger(priority=True),
        InvalidTrigger,
        "priority",
        "got True",
    ),
    (
        "priority-str",
        lambda: wrong.noop.trigger(priority="1"),
        InvalidTrigger,
        "priority",
        "got '1'",
    ),
    (
        "priority-float",
        lambda: wrong.noop.trigger(priority=1.5),
        InvalidTrigger,
        "priority",
        "got 1.5",
    ),
    (
        "priority-out-of-range",
        lambda: wrong.noop.trigger(priority=2**31),
        InvalidTrigger,
        "priority",
        "between -2147483648 and 2147483647",
    ),
    ("queue-empty", lambda: wrong.noop.trigger(queue=""), InvalidTrigger, "queue", "got ''"),
    ("queue-int", lambda: wrong.noop.trigger(queue=5), InvalidTrigger, "queue", "got 5"),
    (
        "queue-too-long",
        lambda: wrong.noop.trigger(queue="q" * 101),
        InvalidTrigger,
        "queue",
        "at most 100 characters",
    ),
    (
        "coalesce",
        lambda: wrong.noop.trigger(coalesce="maybe"),
        InvalidTrigger,
        "coalesce",
        "coalesce must be 'error' or 'skip', got 'maybe'.",
    ),
    (
        "idempotency-key-empty",
        lambda: wrong.noop.trigger(idempotency_key=""),
        InvalidTrigger,
        "idempotency_key",
        "non-empty string",
    ),
    (
        "idempotency-key-int",
        lambda: wrong.noop.trigger(idempotency_key=5),
        InvalidTrigger,
        "idempotency_key",
        "got 5",
    ),
    (
        "idempotency-key-too-long",
        lambda: wrong.noop.trigger(idempotency_key="k" * 256),
        InvalidTrigger,
        "idempotency_key",
        "at most 255",
    ),
    (
        "concurrency-key-empty",
        lambda: wrong.noop.trigger(concurrency_key=""),
        InvalidTrigger,
        "concurrency_key",
        "non-empty string",
    ),
    (
        "concurrency-key-callable-fails",
        lambda: wrong.per_user.trigger({"no-user": 1}),
        InvalidTrigger,
        "concurrency_key",
        "The concurrency_key callable of job 'tests.jobs.per_user' failed: KeyError('user')",
    ),
]


@pytest.mark.parametrize(
    ("attempt", "error", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_TRIGGERS],
)
def test_trigger__bad_input_gets_a_typed_error_and_no_row(
    db_alias, attempt: Callable[[], Run], error, field, fragment
):
    with pytest.raises(error) as caught:
        attempt()
    assert type(caught.value) is error
    assert caught.value.field == field
    assert fragment in str(caught.value)
    assert caught.value.errors[0]["loc"][0] == field
    assert Run.objects.count() == 0


def test_trigger__schema_failure_lists_field_errors(db_alias):
    with pytest.raises(InvalidInput) as caught:
        jobs.greet.trigger({"name": 1, "times": "x"})
    assert [(e["loc"], e["type"]) for e in caught.value.errors] == [
        (["input", "name"], "string_type"),
        (["input", "times"], "int_parsing"),
    ]
    assert Run.objects.count() == 0


def test_trigger__unknown_job_name(db_alias):
    with pytest.raises(JobNotFound) as caught:
        django_durably.trigger("nope", {"x": 1})
    assert caught.value.job_name == "nope"
    assert str(caught.value).startswith("No job is registered under the name 'nope'.")
    assert Run.objects.count() == 0


def test_trigger__input_over_the_size_limit(db_alias, settings):
    settings.DURABLY_MAX_INPUT_BYTES = 20
    at_limit = {"s": "x" * 12}
    assert len(json.dumps(at_limit, separators=(",", ":")).encode()) == 20
    jobs.noop.trigger(at_limit)
    with pytest.raises(InvalidInput) as caught:
        jobs.noop.trigger({"s": "x" * 13})
    assert caught.value.field == "input"
    assert str(caught.value) == (
        "Input of job 'tests.jobs.noop' is 21 bytes of JSON; the limit is 20 "
        "(DURABLY_MAX_INPUT_BYTES)."
    )
    assert Run.objects.count() == 1


def test_trigger__input_size_is_measured_on_the_stored_json(db_alias, settings):
    settings.DURABLY_MAX_INPUT_BYTES = 20
    # 8 characters, but each is stored escaped as 6 bytes (\u00e9).
    with pytest.raises(InvalidInput, match="is 56 bytes of JSON"):
        jobs.noop.trigger({"s": "é" * 8})
    assert Run.objects.count() == 0


def test_trigger__huge_input_with_the_default_limit(db_alias):
    with pytest.raises(InvalidInput, match="the limit is 1048576"):
        jobs.noop.trigger({"blob": "x" * (1024 * 1024)})
    assert Run.objects.count() == 0


# -- races: two threads, one key -----------------------------------------------------------------


def race(*attempts: Callable[[], Any]) -> list[Any]:
    """Run each callable in its own thread, started together; return results or exceptions."""
    return at_once(*attempts, catch=Exception, timeout=60)


@pytest.mark.slow
@transactional
def test_trigger_race__same_idempotency_key_creates_one_run(db_alias):
    for i in range(RACE_ROUNDS):
        key = f"race-{i}"
        results = race(
            partial(jobs.noop.trigger, {"who": "a"}, idempotency_key=key),
            partial(jobs.noop.trigger, {"who": "b"}, idempotency_key=key),
        )
        assert all(isinstance(r, Run) for r in results), results
        assert sorted(r.disposition for r in results) == ["created", "idempotent"]
        assert results[0].pk == results[1].pk
        assert Run.objects.filter(idempotency_key=key).count() == 1
    assert Run.objects.count() == RACE_ROUNDS


@pytest.mark.slow
@transactional
def test_trigger_race__same_concurrency_key_creates_one_pending_run(db_alias):
    for i in range(RACE_ROUNDS):
        key = f"race-{i}"
        results = race(
            partial(jobs.noop.trigger, concurrency_key=key),
            partial(jobs.noop.trigger, concurrency_key=key),
        )
        created = [r for r in results if isinstance(r, Run)]
        conflicts = [r for r in results if isinstance(r, PendingRunExists)]
        assert len(created) == 1, results
        assert len(conflicts) == 1, results
        assert created[0].disposition == "created"
        assert conflicts[0].run_id == created[0].pk
        assert Run.objects.filter(concurrency_key=key).count() == 1
    assert Run.objects.count() == RACE_ROUNDS


@pytest.mark.slow
@transactional
def test_trigger_race__same_concurrency_key_with_skip_coalesces(db_alias):
    for i in range(RACE_ROUNDS):
        key = f"race-{i}"
        results = race(
            partial(jobs.noop.trigger, concurrency_key=key, coalesce="skip"),
            partial(jobs.noop.trigger, concurrency_key=key, coalesce="skip"),
        )
        assert all(isinstance(r, Run) for r in results), results
        assert sorted(r.disposition for r in results) == ["coalesced", "created"]
        assert results[0].pk == results[1].pk
        assert Run.objects.filter(concurrency_key=key).count() == 1
    assert Run.objects.count() == RACE_ROUNDS


# -- strings databases cannot store ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "field"),
    [
        pytest.param({"labels": {"k": "a\x00"}}, InvalidLabels, "labels", id="label-nul"),
        pytest.param({"labels": {"k": "\udc00"}}, InvalidLabels, "labels", id="label-surrogate"),
        pytest.param({"idempotency_key": "a\x00"}, InvalidTrigger, "idempotency_key", id="key-nul"),
        pytest.param({"idempotency_key": "\ud800"}, InvalidTrigger, "idempotency_key", id="key-surrogate"),
        pytest.param({"concurrency_key": "a\x00"}, InvalidTrigger, "concurrency_key", id="ckey-nul"),
    ],
)  # fmt: skip
def test_trigger__refuses_strings_databases_cannot_store(db_alias, options, error, field):
    # PostgreSQL refuses NUL characters in text and JSON, and no database stores lone surrogates:
    # they are refused at trigger time, on every database, instead of failing inside the INSERT.
    with pytest.raises(error) as caught:
        jobs.noop.trigger(None, **options)
    assert caught.value.field == field
    assert not Run.objects.exists()


@pytest.mark.parametrize("value", ["a\x00b", {"k": "\ud800"}], ids=["nul", "surrogate"])
def test_trigger__refuses_input_databases_cannot_store(db_alias, value):
    with pytest.raises(InvalidInput, match="which databases cannot store"):
        jobs.noop.trigger(value)
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    "key", ["retrigger:00000000-0000-4000-8000-000000000000:k", "schedule:1:x"]
)
def test_trigger_idempotency__reserved_prefixes_are_refused(db_alias, key):
    with pytest.raises(InvalidTrigger, match="reserves the prefixes") as caught:
        jobs.noop.trigger(None, idempotency_key=key)

    assert caught.value.field == "idempotency_key"
    assert not Run.objects.exists()


def test_trigger_idempotency__a_reserved_prefix_elsewhere_in_the_key_is_fine(db_alias):
    run = jobs.noop.trigger(None, idempotency_key="mine:retrigger:1")

    assert run.idempotency_key == "mine:retrigger:1"


def test_trigger__input_nested_past_the_recursion_limit_is_invalid_input(db_alias):
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]

    with pytest.raises(InvalidInput, match="nested too deeply") as caught:
        jobs.noop.trigger(deep)

    assert caught.value.field == "input"
    assert not Run.objects.exists()
