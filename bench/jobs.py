"""Jobs the benchmarks run (autodiscovered: ``bench`` is an installed app of bench.settings)."""

from __future__ import annotations

import time
from typing import Any

from django_durably import StepContext, job


@job(name="bench.noop")
def noop(step: StepContext, input: Any) -> None:
    return None


@job(name="bench.entered_at")
def entered_at(step: StepContext, input: Any) -> float:
    """Returns the wall-clock time at which the job function was entered."""
    return time.time()


def _identity(value: int) -> int:
    return value


@job(name="bench.steps")
def steps(step: StepContext, input: Any) -> int:
    """``input["steps"]`` trivial checkpointed steps, one after another."""
    count = int(input["steps"])
    for i in range(count):
        step.run(f"s{i}", _identity, i)
    return count


# -- durable waits (the wake-up benchmark) ---------------------------------------------------------


@job(name="bench.awaits_signal")
def awaits_signal(step: StepContext, input: Any) -> dict[str, float]:
    """Waits for the signal ``go``; returns the wall-clock times at which the job function was
    entered (on the attempt that the signal woke, the replay's) and at which the wait returned."""
    entered = time.time()
    step.wait_for_signal("go")
    return {"entered": entered, "continued": time.time()}


@job(name="bench.ended_at")
def ended_at(step: StepContext, input: Any) -> float:
    """A child run: returns the wall-clock time at which its job function returned (its end, but
    for writing it)."""
    return time.time()


@job(name="bench.fan_in")
def fan_in(step: StepContext, input: Any) -> dict[str, float]:
    """Triggers one child run of ``bench.ended_at`` and waits for it; returns the child's end and
    the wall-clock times at which the job was entered (the attempt its child's end woke) and at
    which the wait returned."""
    entered = time.time()
    child = step.trigger("child", ended_at, None)
    (child_ended,) = step.wait_for_runs("children", [child])
    return {"child_ended": float(child_ended), "entered": entered, "continued": time.time()}
