"""Holding a lease in a test as a worker holds one: claim a run, then the lease handle and the step
store its attempt would use (for tests of lease-holder writes without running a job)."""

from __future__ import annotations

import time
from typing import Any

from django_durably import leases
from django_durably.checkpoints import ModelStepStore
from django_durably.leases import LeaseHandle
from django_durably.models import Run


def claim_one(worker_id: str = "w", **options: Any) -> Run:
    """Claim exactly one ready run (``leases.claim`` options as keywords) and return it."""
    claimed = leases.claim(worker_id=worker_id, limit=1, **options)
    assert len(claimed) == 1, claimed
    return claimed[0]


def handle_of(run: Run, generation: int | None = None, *, seconds: float = 60) -> LeaseHandle:
    """The handle of the lease ``run`` was claimed with (or of ``generation``), ``seconds`` from its
    local deadline (negative: already past it)."""
    return LeaseHandle(
        run_id=run.pk,
        generation=run.lease_generation if generation is None else generation,
        deadline=time.monotonic() + seconds,
    )


def store_for(run: Run, generation: int | None = None) -> ModelStepStore:
    """The step store of the attempt holding ``run``'s lease (or ``generation``)."""
    return ModelStepStore(run, handle_of(run, generation))
