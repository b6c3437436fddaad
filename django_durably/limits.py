"""What bounds one attempt: its timeout, the timed step call it is in, and its retry policies.

Plain data, shared by the :class:`~django_durably.context.StepContext` (which sets the step call),
the executor (which sets the attempt's limits on its lease handle) and ``timeouts`` (which ends an
attempt that ran past them). It imports no model, so ``context`` stays importable before Django is
set up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from django_durably.retries import Retry

Expired = Literal["run", "step"]


@dataclass
class StepCall:
    """A step function running under a timeout: what its timed-out row and retry need."""

    name: str
    index: int
    step_attempt: int
    started_at: datetime
    timeout: float
    timeout_at: float
    policy: Retry


@dataclass
class AttemptLimits:
    """One attempt's timeout and retry policy, and the step call it is in (if timed)."""

    job_name: str
    run_attempt: int
    failed_attempts: int
    policy_of: Callable[[], Retry]
    """The job's retry policy, read when an end needs it (settings may supply it)."""
    started: float
    """``time.monotonic()`` when the attempt's job started."""
    timeout: float | None = None
    timeout_at: float | None = None
    step: StepCall | None = None
    parent_id: UUID | None = None
    """The run's parent (``step.trigger``): woken when the attempt's end fails the run."""

    @property
    def policy(self) -> Retry:
        return self.policy_of()

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.timeout_at, self.step and self.step.timeout_at) if d]
        return min(deadlines) if deadlines else None

    def postpone(self, until: float) -> None:
        """Look at the passed deadlines again no sooner than ``until`` (ending failed)."""
        if self.timeout_at is not None and self.timeout_at < until:
            self.timeout_at = until
        if self.step is not None and self.step.timeout_at < until:
            self.step.timeout_at = until

    def expired(self, now: float) -> Expired | None:
        """Which deadline passed, if one did (the step's first: it is the more precise error)."""
        if self.step is not None and now >= self.step.timeout_at:
            return "step"
        if self.timeout_at is not None and now >= self.timeout_at:
            return "run"
        return None


def step_retry_marker(name: str, step_attempt: int) -> dict[str, str]:
    """Keys added to the run's error when a step's next try waits for the next claim: that claim
    continues the step's tries from ``step_attempt`` rather than starting again."""
    return {"retry": "step", "step": name, "step_attempt": str(step_attempt)}
