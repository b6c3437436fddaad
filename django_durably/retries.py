"""Retry policies: :class:`Retry`, the project default, and the decision "try again, and when?".

A policy is data (frozen, comparable, safe to share between jobs). Run-level policies come from
``@job(retry=...)`` or ``DURABLY_DEFAULT_RETRY``; step-level ones from ``step.run(..., retry=...)``.
Delays are seconds *from the database clock*: the end of an attempt writes ``run_after = now +
delay`` in the statement that ends it, so workers with skewed clocks agree on when a retry is due.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_durably.conf import durably_settings
from django_durably.exceptions import ChildRunFailed, DurableWaitTimeout, NonRetryable

__all__ = ["NO_RETRY", "Retry", "default_policy", "next_delay", "reclaim_limit", "seconds"]

ExceptionTypes = tuple[type[BaseException], ...]


def seconds(value: float | timedelta | None, *, what: str) -> float | None:
    """``value`` in seconds (a number or a ``timedelta``); ``None`` stays ``None``. Raises
    ``ValueError`` for a negative, infinite or non-numeric value."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number of seconds or a timedelta, got {value!r}.")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number of seconds, at least 0; got {value!r}.")
    return number


def _exception_types(value: Any, *, what: str) -> ExceptionTypes:
    types = (value,) if isinstance(value, type) else tuple(value)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{what} must be exception classes, got {item!r}.")
    return types


@dataclass(frozen=True, kw_only=True)
class Retry:
    """How often, and how long apart, a job or a step is tried when it raises.

    ``max_attempts`` is the total number of tries (1: no retry). The n-th retry waits
    ``initial_delay * backoff ** (n - 1)`` seconds, at most ``max_delay``; with ``jitter`` a random
    share of up to half of it is taken off, so runs that failed together do not retry together.
    Only exceptions that are instances of ``retry_on`` and not of ``give_up_on`` are retried;
    :class:`~django_durably.NonRetryable` never is. Delays may be given as ``timedelta``.
    """

    max_attempts: int = 1
    initial_delay: float | timedelta = 1.0
    """Seconds before the first retry (a ``timedelta`` is turned into seconds)."""
    backoff: float = 2.0
    max_delay: float | timedelta = 600.0
    """The longest delay, in seconds (a ``timedelta`` is turned into seconds)."""
    jitter: bool = True
    retry_on: ExceptionTypes = field(default=(Exception,))
    give_up_on: ExceptionTypes = field(default=())

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError(
                f"max_attempts must be an integer of at least 1, got {self.max_attempts!r}."
            )
        initial = seconds(self.initial_delay, what="initial_delay")
        largest = seconds(self.max_delay, what="max_delay")
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, (int, float)):
            raise ValueError(f"backoff must be a number, got {self.backoff!r}.")
        if not math.isfinite(self.backoff) or self.backoff < 1:
            raise ValueError(
                f"backoff must be a finite number of at least 1, got {self.backoff!r}."
            )
        object.__setattr__(self, "initial_delay", initial)
        object.__setattr__(self, "max_delay", largest)
        object.__setattr__(self, "backoff", float(self.backoff))
        object.__setattr__(self, "jitter", bool(self.jitter))
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on, what="retry_on"))
        object.__setattr__(self, "give_up_on", _exception_types(self.give_up_on, what="give_up_on"))

    def retries(self, error: BaseException, tries: int) -> bool:
        """Whether to try again after ``tries`` failed tries, the last raising ``error``."""
        if tries >= self.max_attempts or isinstance(error, (NonRetryable, *_DECIDED)):
            return False
        if self.give_up_on and isinstance(error, self.give_up_on):
            return False
        return isinstance(error, self.retry_on)

    def delay(self, tries: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``tries`` failed tries (1 for the first retry)."""
        exponent = max(tries - 1, 0)
        initial, largest = _as_seconds(self.initial_delay), _as_seconds(self.max_delay)
        try:
            base = initial * self.backoff**exponent
        except OverflowError:
            base = math.inf
        base = min(base, largest)
        if self.jitter and base > 0:
            base -= (rng or random).uniform(0, base / 2)  # noqa: S311 - not for security
        return base

    def describe(self) -> str:
        """A short text for people: ``5 attempts, 1s x2 up to 600s, jitter``."""
        if self.max_attempts == 1:
            return "no retry"
        text = (
            f"{self.max_attempts} attempts, {_as_seconds(self.initial_delay):g}s "
            f"x{self.backoff:g} up to {_as_seconds(self.max_delay):g}s"
        )
        return text + (", jitter" if self.jitter else "")


def _as_seconds(value: float | timedelta) -> float:
    """A delay field's value: seconds once ``__post_init__`` has run (typed for a ``timedelta``)."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


NO_RETRY = Retry()
"""One try: the default of jobs and steps when nothing else is configured."""


def default_policy() -> Retry:
    """``DURABLY_DEFAULT_RETRY``: a :class:`Retry`, a dict of its arguments, or ``None`` (no
    retry). Applies to jobs declared without ``retry=``; steps are tried once unless told."""
    value = durably_settings.DEFAULT_RETRY
    if value is None:
        return NO_RETRY
    if isinstance(value, Retry):
        return value
    if isinstance(value, Mapping):
        try:
            return Retry(**value)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"DURABLY_DEFAULT_RETRY is not a valid policy: {exc}"
            ) from exc
    raise ImproperlyConfigured(
        f"DURABLY_DEFAULT_RETRY must be a django_durably.Retry, a dict or None; got {value!r}."
    )


# Outcomes of durable waits, checkpointed or decided by other runs: trying again would meet them
# again at once (a wait's timeout is replayed; failed children stay failed until an operator acts).
_DECIDED: tuple[type[BaseException], ...] = (DurableWaitTimeout, ChildRunFailed)


def next_delay(policy: Retry, error: BaseException, tries: int) -> float | None:
    """Seconds until the next try after ``tries`` failed ones (the last raising ``error``), or
    ``None`` when the policy gives up."""
    if not policy.retries(error, tries):
        return None
    return policy.delay(tries)


def reclaim_limit(policy: Retry) -> tuple[int, str]:
    """How many failed or lost attempts a run may reach before a reclaim fails it instead (a job
    that kills its worker must not loop forever), and where the limit comes from."""
    if policy.max_attempts > 1:
        return policy.max_attempts, "the retry policy's max_attempts"
    return durably_settings.MAX_RECLAIMS, "DURABLY_MAX_RECLAIMS"
