"""Holding a lease in a test as a worker holds one: claim a run, then the lease handle and the step
store its attempt would use (for tests of lease-holder writes without running a job); and looking
at a lease by the database clock."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.db.models.functions import Now

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


def expire(run: Run) -> None:
    """End ``run``'s lease a second ago by the database clock (its holder died)."""
    assert Run.objects.filter(pk=run.pk).update(lease_expires_at=Now() - timedelta(seconds=1))


def db_now_and_expiry(run: Run) -> tuple[Any, Any]:
    """The database clock now, and when ``run``'s lease expires by it."""
    return (
        Run.objects.filter(pk=run.pk)
        .annotate(now=Now())
        .values_list("now", "lease_expires_at")
        .get()
    )


def snapshot(run: Run) -> dict[str, Any]:
    """``run``'s row as stored, every field (to show a refused write changed nothing)."""
    return dict(Run.objects.filter(pk=run.pk).values().get())
