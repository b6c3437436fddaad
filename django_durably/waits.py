"""Durable waits from the outside: sending a signal to a run, and waking waiting runs whose timer
is due (DESIGN.md section 7).

A run reaches a wait inside its job (``step.sleep``, ``step.wait_for_signal``,
``step.wait_for_runs``); the job unwinds and the run is ``waiting``, holding no worker. It becomes
``pending`` again when

* its timer is due: :func:`wake_due_runs`, which every claiming entry point calls (the worker at
  least once per poll interval and at each wake time it knows of, ``process_one``,
  ``process_until_idle``);
* a signal it waits for is sent: :func:`send_signal`;
* its child runs have ended: ``leases.wake_parents``, called where a run ends (the worker's end
  of a run, a cancel, a timeout).

The writes and their locks are in ``leases.waiting``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import transaction

from django_durably import leases, signals
from django_durably.database import db_alias, retry_if_locked
from django_durably.events import send_after_commit
from django_durably.models import AuditAction, AuditRecord, Run, RunStatus
from django_durably.operations import _actor_name
from django_durably.validation import check_optional_key, check_signal_name, run_pk, signal_payload

__all__ = ["SignalResult", "send_signal", "wake_due_runs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalResult:
    """What :func:`send_signal` did.

    ``created`` is False when the run already had a signal with this ``idempotency_key`` (that one
    is returned, nothing is stored); ``woke`` whether the run was waiting for it and is now
    pending; ``run_status`` the run's status after the send."""

    signal_id: int
    run_id: UUID
    name: str
    created: bool
    woke: bool
    run_status: str


def send_signal(
    run_id: UUID | str,
    name: str,
    payload: Any = None,
    *,
    idempotency_key: str | None = None,
    actor: Any = None,
    source: str = "python",
) -> SignalResult:
    """Send signal ``name`` with ``payload`` (JSON) to a run that has not finished.

    The signal is stored (a ``Signal`` row) until a ``step.wait_for_signal`` of that name consumes
    it, the oldest first, so one sent before the run waits is not lost; a run waiting for it is
    woken (pending again, its workers notified). With an ``idempotency_key``, sending again stores
    nothing and returns the first send (``created=False``).

    Raises :class:`~django_durably.exceptions.RunNotFound`,
    :class:`~django_durably.exceptions.RunNotWaiting` when the run finished (completed, failed or
    cancelled), and :class:`~django_durably.exceptions.InvalidValue` for a bad name, payload or key.
    """
    run_id = run_pk(run_id)
    name = check_signal_name(name)
    stored = signal_payload(payload)
    key = check_optional_key(idempotency_key, "idempotency_key")
    actor_name = _actor_name(actor)
    alias = db_alias()

    def send() -> leases.Delivery:
        with transaction.atomic(using=alias):
            delivery = leases.deliver_signal(
                run_id, name, stored, idempotency_key=key, sent_by=actor_name, source=source
            )
            if delivery.created:
                AuditRecord.objects.using(alias).create(
                    run_id=run_id,
                    run_uuid=run_id,
                    job_name=delivery.job_name,
                    action=AuditAction.SIGNAL,
                    actor=actor_name,
                    source=source,
                    from_status=RunStatus.WAITING if delivery.woke else delivery.run_status,
                    to_status=RunStatus.PENDING if delivery.woke else "",
                    detail={"name": name, "signal_id": delivery.signal.pk, "woke": delivery.woke},
                )
                send_after_commit(
                    signals.signal_sent,
                    using=alias,
                    run_id=run_id,
                    job_name=delivery.job_name,
                    name=name,
                    signal_id=delivery.signal.pk,
                    created=True,
                    woke=delivery.woke,
                    actor=actor_name,
                    source=source,
                )
                if delivery.woke:
                    send_after_commit(
                        signals.run_woken, using=alias, run_ids=[run_id], reason="signal"
                    )
            return delivery

    delivery = retry_if_locked(alias, send)
    return SignalResult(
        signal_id=delivery.signal.pk,
        run_id=run_id,
        name=delivery.signal.name,
        created=delivery.created,
        woke=delivery.woke,
        run_status=delivery.run_status,
    )


def wake_due_runs(limit: int = 100) -> int:
    """Make pending the waiting runs whose timer is due (at most ``limit``, earliest first) and wake
    their workers; return how many. Safe to call from any number of processes at once."""
    woken = leases.wake_due(limit)
    if woken:
        signals.run_woken.send(sender=Run, run_ids=woken, reason="timer")
    return len(woken)


def wake_parents_of(parent_ids: Iterable[UUID | None]) -> None:
    """After runs ended: wake their parents that were waiting for them (see ``leases.wake_parents``)."""
    woken = leases.wake_parents(parent_ids)
    if woken:  # after commit: the wake-up may be in the transaction of the ends that caused it
        send_after_commit(signals.run_woken, using=db_alias(), run_ids=woken, reason="children")
