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
