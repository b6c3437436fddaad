"""The :class:`StepContext` a job receives, and the current-run context variable.

The context holds the replay logic (completed steps are returned, never re-run) and talks to storage
only through the small :class:`StepStore` protocol. The executor passes in the model-backed store;
``testing`` has an in-memory one, so job functions can be unit-tested without a database.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar
from uuid import UUID

from django.utils import timezone

from django_durably.awaiting import WaitRequest, WaitResult, checkpoint_of, result_of
from django_durably.conf import durably_settings
from django_durably.exceptions import (
    ChildRunFailed,
    ChildRunsTimeout,
    DuplicateStepName,
    DurablyInterrupt,
    InvalidWait,
    JobCancelled,
    SignalTimeout,
    StepRetryLater,
)
from django_durably.limits import StepCall, step_retry_marker
from django_durably.retries import NO_RETRY, Retry, seconds
from django_durably.serialization import describe_exception, storable_text, to_json_lenient
from django_durably.types import JSON, LogLevel
from django_durably.validation import (
    MAX_PROGRESS_MESSAGE_LENGTH,
    MAX_STEP_NAME_LENGTH,
    check_progress,
    check_step_name,
    output_json,
)

__all__ = [
    # The limits live in ``validation``; importable from here as they were.
    "MAX_PROGRESS_MESSAGE_LENGTH",
    "MAX_STEP_NAME_LENGTH",
    "StepContext",
    "StepLogger",
    "StepStore",
    "current_context",
]

R = TypeVar("R")

job_logger = logging.getLogger("django_durably.jobs")


class StepStore(Protocol):
    """What a :class:`StepContext` needs from storage.

    Every ``save_*`` method is fenced: when the run is no longer held by this execution it writes
    nothing and raises :class:`~django_durably.exceptions.JobCancelled` or
    :class:`~django_durably.exceptions.LeaseLost`.
    """

    def load_completed(self) -> dict[str, JSON]:
        """Outputs of the run's completed steps, by step name."""

    def check(self) -> None:
        """Raise an interrupt if the run was cancelled or the lease is lost. Called before every
        new step: a cancel acknowledged before the step would start must stop the job there."""

    def step_started(self, *, index: int, name: str) -> None:
        """A new (not replayed) step is about to call its function."""

    def save_completed(
        self, *, index: int, name: str, output: JSON, started_at: datetime, step_attempt: int = 1
    ) -> None:
        """Persist a completed step and advance the run's step counters, atomically."""

    def save_failed(
        self,
        *,
        index: int,
        name: str,
        error: dict[str, str],
        started_at: datetime,
        step_attempt: int = 1,
    ) -> None:
        """Persist a failed try of a step."""

    def step_tries(self, name: str) -> int:
        """Failed tries of step ``name`` that this attempt continues (the run was released until
        the step's next try was due); 0 otherwise."""

    def wait(self, seconds: float) -> None:
        """Wait in place before a step's next try, keeping the lease; raise ``JobCancelled`` or
        ``LeaseLost`` as soon as the run is cancelled or the lease lost meanwhile."""

    def timing(self, call: StepCall | None) -> AbstractContextManager[None]:
        """Hold the step call's timeout (``None``: none) while its function runs."""

    def settle_wait(self, request: WaitRequest) -> WaitResult:
        """Settle a durable wait: return its result when it is over (checkpointed, unless child
        runs failed), or put the run in ``waiting``, release the lease and raise
        :class:`~django_durably.exceptions.RunWaiting`."""

    def trigger_children(
        self, *, index: int, name: str, job: Any, inputs: list[Any], options: dict[str, Any]
    ) -> list[UUID]:
        """Create child runs of ``job`` (a job or its name), one per input, and checkpoint their
        ids as step ``name``, in one transaction; return the ids."""

    def save_cancelled(self, *, index: int, name: str, started_at: datetime) -> None:
        """Record that the run was cancelled while this step ran (not fenced: the run is no longer
        leased; never raises for a refused or failed write)."""

    def save_progress(self, progress: dict[str, Any]) -> None:
        """Store the run's progress."""

    def save_log(self, *, level: LogLevel, message: str, data: JSON, step_name: str | None) -> None:
        """Append a log line to the run."""


_current: ContextVar[StepContext | None] = ContextVar("django_durably_step_context", default=None)


def current_context() -> StepContext:
    """The :class:`StepContext` of the job running in this thread, for code deep in a call stack.

    Raises ``RuntimeError`` outside a running job.
    """
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("No durable job is running in this context.")
    return ctx


class StepLogger:
    """``step.log``: log lines stored with the run (as ``RunLog`` rows) and sent to Python logging."""

    def __init__(self, context: StepContext) -> None:
        self._context = context

    def info(self, message: str, **data: Any) -> None:
        """Store an info line; keyword arguments are stored as JSON data."""
        self._context._log("info", message, data)

    def warning(self, message: str, **data: Any) -> None:
        """Store a warning line."""
        self._context._log("warning", message, data)

    def error(self, message: str, **data: Any) -> None:
        """Store an error line."""
        self._context._log("error", message, data)


class StepContext:
    """Handed to every job function (called ``step`` by convention).

    ``step.run(name, fn, *args, **kwargs)`` is the checkpoint: the first time a name is reached,
    ``fn`` runs and its JSON output is stored; on any later attempt of the same run the stored output
    is returned and ``fn`` is not called. Side effects inside a step must tolerate running more than
    once (a worker may die after ``fn`` returns but before the checkpoint is written); code outside
    steps re-runs on every attempt.
    """

    def __init__(
        self,
        *,
        run_id: UUID,
        job_name: str,
        attempt: int,
        store: StepStore,
    ) -> None:
        self._run_id = run_id
        self._job_name = job_name
        self._attempt = attempt
        self._store = store
        self._completed = store.load_completed()
        self._seen: set[str] = set()
        self._next_index = 0
        self._current_step: str | None = None
        self.log = StepLogger(self)

    @property
    def run_id(self) -> UUID:
        """The id of the run being executed."""
        return self._run_id

    @property
    def job_name(self) -> str:
        """The registry name of the job."""
        return self._job_name

    @property
    def attempt(self) -> int:
        """1 on the first execution of the run, 2 after it was reclaimed or resumed once, ..."""
        return self._attempt

    @property
    def current_step(self) -> str | None:
        """The name of the step whose function is running, if any."""
        return self._current_step

    def check(self) -> None:
        """Raise ``JobCancelled`` or ``LeaseLost`` if this execution must stop.

        Called automatically before every new step; call it inside long loops too (it costs no
        query in a PostgreSQL worker, and at most a read every few milliseconds elsewhere).
        """
        self._store.check()

    def run(
        self,
        name: str,
        fn: Callable[..., R],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> R:
        """Run ``fn(*args, **kwargs)`` as the checkpointed step ``name`` and return its output.

        The output is returned as it reads back from the database (JSON: tuples become lists,
        pydantic models become dicts), the same on the first run and on replay. If ``fn`` raises,
        a failed step row is stored and, once ``retry`` (a :class:`~django_durably.Retry`; default:
        one try) gives up, the exception propagates. A retry due within
        ``DURABLY_INLINE_RETRY_MAX_DELAY`` seconds is waited for in place (the lease is kept; a
        cancel stops the wait); a later one releases the run until then. ``timeout`` (seconds or a
        ``timedelta``) bounds each call of ``fn``: past it the worker ends the attempt with
        ``StepTimedOut``. ``retry`` and ``timeout`` are this method's own keywords: pass ``fn``
        arguments of those names with ``functools.partial``.
        """
        self._claim_name(name)
        index = self._next_index
        self._next_index += 1
        if name in self._completed:
            return self._completed[name]  # type: ignore[return-value]  # replay: JSON as stored
        policy = NO_RETRY if retry is None else _policy(retry)
        limit = _step_timeout(timeout)
        tries = self._store.step_tries(name)
        self.check()
        while True:
            tries += 1
            started_at = timezone.now()
            self._store.step_started(index=index, name=name)
            try:
                output = self._call_step(
                    index, name, started_at, tries, policy, limit, fn, args, kwargs
                )
            except JobCancelled:
                # Cancelled while the step ran: its work is not checkpointed; say so in its history.
                self._store.save_cancelled(index=index, name=name, started_at=started_at)
                raise
            except DurablyInterrupt:
                raise
            except Exception as exc:
                delay = None if not policy.retries(exc, tries) else policy.delay(tries)
                if delay is None:
                    raise
                if delay > durably_settings.INLINE_RETRY_MAX_DELAY:
                    error = {**describe_exception(exc), **step_retry_marker(name, tries)}
                    raise StepRetryLater(
                        self._run_id, step_name=name, step_attempt=tries, delay=delay, error=error
                    ) from exc
                job_logger.info(
                    "[%s %s] step %r failed (try %d); trying again in %.2fs",
                    self._job_name,
                    self._run_id,
                    name,
                    tries,
                    delay,
                    extra={"run_id": str(self._run_id), "step_name": name, "action": "step_retry"},
                )
                try:
                    self._store.wait(delay)
                    self.check()  # a cancel the wait could not hear of (no notifications)
                except JobCancelled:
                    self._store.save_cancelled(index=index, name=name, started_at=started_at)
                    raise
                continue
            return output  # type: ignore[return-value]

    def _call_step(
        self,
        index: int,
        name: str,
        started_at: datetime,
        tries: int,
        policy: Retry,
        timeout: float | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> JSON:
        """Call a step's function once, checkpoint its outcome and return its output as stored."""
        self._current_step = name
        call = None
        if timeout is not None:
            call = StepCall(
                name=name,
                index=index,
                step_attempt=tries,
                started_at=started_at,
                timeout=timeout,
                timeout_at=time.monotonic() + timeout,
                policy=policy,
            )
        try:
            with self._store.timing(call):
                output = output_json(fn(*args, **kwargs), what=f"Output of step {name!r}")
        except DurablyInterrupt:
            raise
        except Exception as exc:
            self._store.save_failed(
                index=index,
                name=name,
                error=describe_exception(exc),
                started_at=started_at,
                step_attempt=tries,
            )
            raise
        finally:
            self._current_step = None
        self._store.save_completed(
            index=index, name=name, output=output, started_at=started_at, step_attempt=tries
        )
        self._completed[name] = output
        return output

    # -- durable waits ------------------------------------------------------------------------

    def sleep(self, name: str, duration: float | timedelta) -> None:
        """Wait ``duration`` (seconds or a ``timedelta``) without holding a worker: the run is
        ``waiting`` until then and replays up to here, where this returns. The wake time is
        computed once, from the database clock, and kept: a replay never sleeps again."""
        value = _wait_seconds(name, duration, what="duration")
        if value is None:
            raise InvalidWait(f"step.sleep({name!r}) needs a duration, got None.")
        self._wait(name, lambda index: WaitRequest("sleep", name, index, duration=value))

    def sleep_until(self, name: str, when: datetime) -> None:
        """Wait until ``when`` (an aware datetime) without holding a worker; see :meth:`sleep`."""
        if not isinstance(when, datetime) or timezone.is_naive(when):
            raise InvalidWait(
                f"step.sleep_until({name!r}) needs an aware datetime (with a time zone), "
                f"got {when!r}."
            )
        self._wait(name, lambda index: WaitRequest("sleep", name, index, until=when))

    def wait_for_signal(
        self, name: str, timeout: float | timedelta | None = None, *, signal: str | None = None
    ) -> Any:
        """Wait for a signal (``send_signal(run_id, signal, payload)``) without holding a worker and
        return its payload. ``signal`` is the signal's name, by default the step's ``name``. Each
        wait consumes the oldest unconsumed signal of its name, so one sent before the wait is
        returned at once. Past ``timeout`` (seconds or a ``timedelta``), raises
        :class:`~django_durably.exceptions.SignalTimeout`, which the job may catch."""
        wanted = name if signal is None else signal
        if not isinstance(wanted, str) or not wanted:
            raise InvalidWait(f"signal= must be a non-empty string, got {signal!r}.")
        limit = _wait_timeout(name, timeout)
        result = self._wait(
            name, lambda index: WaitRequest("signal", name, index, duration=limit, signal=wanted)
        )
        if result.status == "timed_out":
            raise SignalTimeout(
                f"No signal {wanted!r} reached run {self._run_id} by {result.until} "
                f"(step {name!r}).",
                run_id=self._run_id,
                step_name=name,
                deadline=result.until,
            )
        return result.value

    def trigger(self, name: str, job: Any, inputs: Any = None, /, **options: Any) -> Any:
        """Trigger child runs of ``job`` (a job or its registered name) as step ``name``, once: a
        list of inputs makes one child each and returns their ids in order; any other input makes
        one child and returns its id. A replay returns the same ids and creates nothing.

        Children have this run as ``parent`` and its labels unless ``labels=`` is given; the other
        options are :meth:`Job.trigger`'s (``queue``, ``priority``, ``concurrency_key``,
        ``run_after``). Cancelling this run cancels its unfinished children; wait for them with
        :meth:`wait_for_runs`."""
        if "idempotency_key" in options:
            raise InvalidWait(
                "step.trigger() creates its children exactly once by itself: it takes no "
                "idempotency_key."
            )
        self._claim_name(name)
        index = self._next_index
        self._next_index += 1
        many = isinstance(inputs, (list, tuple))
        if name in self._completed:
            stored = self._completed[name]
            ids = [UUID(str(i)) for i in stored] if isinstance(stored, list) else []
        else:
            self.check()
            items = list(inputs) if many else [inputs]
            ids = self._store.trigger_children(
                index=index, name=name, job=job, inputs=items, options=options
            )
            self._completed[name] = [str(i) for i in ids]
        return ids if many else ids[0]

    def wait_for_runs(
        self, name: str, run_ids: Any, timeout: float | timedelta | None = None
    ) -> list[Any]:
        """Wait, without holding a worker, until the child runs ``run_ids`` (from
        :meth:`trigger`) have ended; return their outputs in the order given. Raises
        :class:`~django_durably.exceptions.ChildRunFailed` naming the children that failed or were
        cancelled (as soon as one did), :class:`~django_durably.exceptions.ChildRunsTimeout` past
        ``timeout``, and :class:`~django_durably.exceptions.InvalidWait` for a run that is not a
        child of this one."""
        single = isinstance(run_ids, (UUID, str))
        try:
            ids = tuple(UUID(str(i)) for i in ([run_ids] if single else run_ids))
        except (TypeError, ValueError):
            raise InvalidWait(
                f"step.wait_for_runs({name!r}) needs run ids, got {run_ids!r}."
            ) from None
        limit = _wait_timeout(name, timeout)
        result = self._wait(
            name, lambda index: WaitRequest("runs", name, index, duration=limit, runs=ids)
        )
        if result.status == "failed":
            raise ChildRunFailed(result.failed, errors=result.errors, step_name=name)
        if result.status == "timed_out":
            raise ChildRunsTimeout(
                f"Child runs of run {self._run_id} had not all ended by {result.until} "
                f"(step {name!r}).",
                run_id=self._run_id,
                step_name=name,
                deadline=result.until,
            )
        return list(result.value or [])

    def _wait(self, name: str, request: Callable[[int], WaitRequest]) -> WaitResult:
        self._claim_name(name)
        index = self._next_index
        self._next_index += 1
        if name in self._completed:
            return result_of(self._completed[name])  # replay: the wait is over
        self.check()
        result = self._store.settle_wait(request(index))
        if result.status != "failed":
            self._completed[name] = checkpoint_of(result)
        return result

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Record how far the run is (shown in the admin and the API); fenced like a step."""
        progress = check_progress(current, total, message)
        self.check()
        self._store.save_progress(progress)

    @contextlib.contextmanager
    def activate(self) -> Iterator[StepContext]:
        """Make this the :func:`current_context` for the duration of the block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def _claim_name(self, name: str) -> None:
        check_step_name(name)
        if name in self._seen:
            raise DuplicateStepName(name)
        self._seen.add(name)

    def _log(self, level: LogLevel, message: str, data: dict[str, Any]) -> None:
        text = storable_text(str(message))
        stored = to_json_lenient(data)
        job_logger.log(
            logging.getLevelNamesMapping()[level.upper()],
            "[%s %s] %s",
            self._job_name,
            self._run_id,
            text,
            extra={"run_id": str(self._run_id), "step_name": self._current_step, "data": stored},
        )
        self._store.save_log(level=level, message=text, data=stored, step_name=self._current_step)


def _policy(retry: Any) -> Retry:
    if not isinstance(retry, Retry):
        raise TypeError(f"retry= takes a django_durably.Retry, got {retry!r}.")
    return retry


def _wait_timeout(name: str, timeout: float | timedelta | None) -> float | None:
    return _wait_seconds(name, timeout, what="timeout")


def _wait_seconds(name: str, value: float | timedelta | None, *, what: str) -> float | None:
    """``value`` in seconds for wait ``name``, or :class:`InvalidWait`."""
    try:
        return seconds(value, what=f"The {what} of wait {name!r}")
    except ValueError as exc:
        raise InvalidWait(str(exc)) from None


def _step_timeout(timeout: float | timedelta | None) -> float | None:
    value = seconds(timeout, what="timeout")
    if value == 0:
        raise ValueError("timeout must be more than 0 seconds.")
    return value
