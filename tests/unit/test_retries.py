"""The retry policy (``django_durably.Retry``): its checks, its delays, its decision; the job and step
options that take one; a step's tries in memory (``testing.InMemoryStepStore``)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_durably import ImproperlyConfiguredJob, NonRetryable, Retry, StepContext
from django_durably.checks import check_settings
from django_durably.exceptions import StepRetryLater
from django_durably.jobs import define_job
from django_durably.retries import NO_RETRY, default_policy, next_delay, reclaim_limit
from django_durably.testing import InMemoryStepStore


def test_retry__defaults_are_one_try():
    assert Retry() == NO_RETRY
    assert NO_RETRY.max_attempts == 1
    assert not NO_RETRY.retries(RuntimeError(), 1)
    assert NO_RETRY.describe() == "no retry"


def test_retry__delays_grow_by_the_backoff_up_to_the_cap():
    policy = Retry(max_attempts=10, initial_delay=1, backoff=3, max_delay=20, jitter=False)

    assert [policy.delay(n) for n in range(1, 6)] == [1, 3, 9, 20, 20]
    assert policy.delay(10_000) == 20  # no overflow
    assert policy.describe() == "10 attempts, 1s x3 up to 20s"


def test_retry__jitter_takes_off_at_most_half():
    policy = Retry(max_attempts=3, initial_delay=10, backoff=1, jitter=True)
    rng = random.Random(7)

    delays = [policy.delay(1, rng=rng) for _ in range(200)]

    assert all(5 <= d <= 10 for d in delays)
    assert len(set(delays)) > 100


def test_retry__timedeltas_are_seconds():
    policy = Retry(initial_delay=timedelta(milliseconds=500), max_delay=timedelta(minutes=2))

    assert (policy.initial_delay, policy.max_delay) == (0.5, 120.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer of at least 1"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"initial_delay": -1}, "initial_delay must be a finite number of seconds"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number of seconds"),
        ({"initial_delay": "1"}, "initial_delay must be a number of seconds or a timedelta"),
        ({"backoff": 0.5}, "backoff must be a finite number of at least 1"),
        ({"retry_on": (ValueError, "x")}, "retry_on must be exception classes"),
        ({"give_up_on": int}, "give_up_on must be exception classes"),
    ],
)
def test_retry__bad_values_are_clear_errors(options: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        Retry(**options)


def test_retry__decides_by_tries_and_exception_class():
    policy = Retry(
        max_attempts=3, initial_delay=0, retry_on=(OSError,), give_up_on=(FileNotFoundError,)
    )

    assert policy.retries(ConnectionError(), 1)
    assert policy.retries(ConnectionError(), 2)
    assert not policy.retries(ConnectionError(), 3)  # the third try was the last
    assert not policy.retries(ValueError(), 1)  # not in retry_on
    assert not policy.retries(FileNotFoundError(), 1)  # give_up_on wins
    assert not policy.retries(NonRetryable("no"), 1)
    assert next_delay(policy, ConnectionError(), 1) == 0
    assert next_delay(policy, ValueError(), 1) is None
    assert Retry(retry_on=ValueError).retry_on == (ValueError,)  # a single class


def test_default_policy__from_settings(settings):
    settings.DURABLY_DEFAULT_RETRY = None
    assert default_policy() is NO_RETRY
    settings.DURABLY_DEFAULT_RETRY = {"max_attempts": 4}
    assert default_policy() == Retry(max_attempts=4)
    settings.DURABLY_DEFAULT_RETRY = Retry(max_attempts=2)
    assert default_policy() == Retry(max_attempts=2)
    settings.DURABLY_DEFAULT_RETRY = {"max_attempt": 4}
    with pytest.raises(ImproperlyConfigured, match="DURABLY_DEFAULT_RETRY is not a valid policy"):
        default_policy()


def test_reclaim_limit__the_policy_or_the_setting(settings):
    settings.DURABLY_MAX_RECLAIMS = 7
    assert reclaim_limit(NO_RETRY) == (7, "DURABLY_MAX_RECLAIMS")
    assert reclaim_limit(Retry(max_attempts=3)) == (3, "the retry policy's max_attempts")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("DEFAULT_RETRY", 3, "DURABLY_DEFAULT_RETRY must be a django_durably.Retry"),
        ("DEFAULT_RETRY", {"backoff": 0}, "DURABLY_DEFAULT_RETRY is not a valid policy"),
        ("INLINE_RETRY_MAX_DELAY", -1, "DURABLY_INLINE_RETRY_MAX_DELAY must be a number"),
        ("MAX_RECLAIMS", 0, "DURABLY_MAX_RECLAIMS must be at least 1"),
        ("MAX_ABANDONED_THREADS", "4", "DURABLY_MAX_ABANDONED_THREADS must be an integer"),
    ],
)
def test_checks__retry_settings(settings, setting: str, value: Any, message: str):
    setattr(settings, f"DURABLY_{setting}", value)

    errors = check_settings()

    assert [e.msg for e in errors if message in e.msg], errors
    assert {e.id for e in errors} <= {"django_durably.E004", "django_durably.E008"}


def _job(step: StepContext, input: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry": {"max_attempts": 3}}, "retry must be a django_durably.Retry"),
        ({"timeout": 0}, "timeout must be more than 0 seconds"),
        ({"timeout": -5}, "timeout must be a finite number of seconds"),
        ({"timeout": "10"}, "timeout must be a number of seconds or a timedelta"),
    ],
)
def test_job_options__bad_retry_or_timeout_is_a_clear_error(options: dict[str, Any], message: str):
    with pytest.raises(ImproperlyConfiguredJob, match=message):
        define_job(
            _job,
            name="tests.bad",
            queue=None,
            priority=None,
            concurrency_key=None,
            input_schema=None,
            output_schema=None,
            **options,
        )


def test_job_options__timeout_in_seconds_and_policy():
    defined = define_job(
        _job,
        name="tests.good",
        queue=None,
        priority=None,
        concurrency_key=None,
        input_schema=None,
        output_schema=None,
        retry=Retry(max_attempts=2),
        timeout=timedelta(minutes=2),
    )

    assert (defined.timeout, defined.retry_policy.max_attempts) == (120.0, 2)


# -- a step's tries, in memory -----------------------------------------------------------------


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"call {self.calls}")
        return self.calls


def test_step_retry__tries_again_after_the_delays_in_place(settings):
    settings.DURABLY_INLINE_RETRY_MAX_DELAY = 10
    store = InMemoryStepStore()
    flaky = Flaky(2)
    policy = Retry(max_attempts=3, initial_delay=0.5, backoff=2, jitter=False)

    assert store.context().run("call", flaky, retry=policy, timeout=5) == 3

    assert store.waits == [0.5, 1.0]
    assert [(s.status, s.step_attempt) for s in store.steps] == [
        ("failed", 1),
        ("failed", 2),
        ("completed", 3),
    ]
    assert store.timeouts == [("call", 5.0)] * 3
    assert store.checks >= 3  # before the first try, and after each wait


def test_step_retry__a_long_delay_releases_the_run(settings):
    settings.DURABLY_INLINE_RETRY_MAX_DELAY = 1
    store = InMemoryStepStore()

    with pytest.raises(StepRetryLater) as raised:
        store.context().run("call", Flaky(5), retry=Retry(max_attempts=3, initial_delay=30))

    later = raised.value
    assert (later.step_name, later.step_attempt) == ("call", 1)
    assert 15 <= later.delay <= 30
    assert later.error["retry"] == "step" and later.error["step_attempt"] == "1"
    assert store.waits == []


def test_step_retry__continues_the_tries_of_a_released_step():
    store = InMemoryStepStore(tries={"call": 2})

    result = store.context().run("call", Flaky(0), retry=Retry(max_attempts=3))

    assert result == 1
    assert [(s.status, s.step_attempt) for s in store.steps] == [("completed", 3)]


def test_step_retry__non_retryable_and_other_classes_fail_at_once():
    store = InMemoryStepStore()
    policy = Retry(max_attempts=5, initial_delay=0, retry_on=(ConnectionError,))

    with pytest.raises(ValueError, match="call 1"):
        store.context().run("a", Flaky(1, ValueError), retry=policy)
    with pytest.raises(NonRetryable):
        store.context().run("b", Flaky(1, NonRetryable), retry=policy)

    assert [(s.name, s.status) for s in store.steps] == [("a", "failed"), ("b", "failed")]
    assert store.waits == []


def test_step_retry__a_cancel_as_a_try_fails_stops_the_step_without_retrying():
    store = InMemoryStepStore()
    store.cancel(on="save_failed")  # the cancel lands as the first try's failure is stored

    with pytest.raises(BaseException) as raised:
        store.context().run("call", Flaky(3), retry=Retry(max_attempts=3, initial_delay=0))

    assert type(raised.value).__name__ == "JobCancelled"
    assert [s.status for s in store.steps] == ["cancelled"]


def test_step_options__are_checked():
    with pytest.raises(TypeError, match="retry= takes a django_durably.Retry"):
        InMemoryStepStore().context().run("x", Flaky(0), retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be more than 0 seconds"):
        InMemoryStepStore().context().run("y", Flaky(0), timeout=0)
