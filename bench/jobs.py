"""Jobs the benchmarks run."""

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
