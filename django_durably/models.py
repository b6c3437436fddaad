"""Runs, their checkpointed steps and their log lines.

Models store a job by its *name* and never import ``jobs``, ``context`` or ``executor``. Status
changes never go through ``save()``: ``leases`` and ``operations`` make them with guarded UPDATEs built
from the predicates on :class:`RunQuerySet`.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, NamedTuple

from django.db import connections, models
from django.db.models import F, Func, Q, Value
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from django_durably.conf import DEFAULT_PRIORITY, DEFAULT_QUEUE


class DatabaseNow(Now):
    """The database's clock, as Django's ``Now()``; on SQLite in the text format Django writes for
    Python datetimes, six fractional digits (``2026-11-30 12:00:00.123000``) where SQLite's clock
    gives three (``12:00:00.123``).

    SQLite compares datetimes as text, so with the two formats mixed, a run created at
    ``12:00:00.123`` was not ``>=`` the same instant read back and passed in as a parameter (a
    ``created_after`` filter missed the run it was copied from).
    """

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="(STRFTIME('%%%%Y-%%%%m-%%%%d %%%%H:%%%%M:%%%%f', 'NOW') || '000')",
            **extra_context,
        )


class RunStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    """Waiting to be claimed by a worker (possibly not before ``run_after``)."""
    LEASED = "leased", _("Running")
    """Claimed by a worker whose lease (``lease_expires_at``) it renews while the job runs."""
    WAITING = "waiting", _("Waiting")
    """Stopped at a durable wait (a sleep, a signal, child runs): holds no worker and no lease;
    ``waiting_for`` says for what, ``wake_at`` until when. Woken, it is pending again."""
    COMPLETED = "completed", _("Completed")
    """Finished; ``output`` holds the job's return value."""
    FAILED = "failed", _("Failed")
    """The job raised; ``error`` holds the exception. Can be resumed."""
    CANCELLED = "cancelled", _("Cancelled")
    """Stopped by an operator. Can be resumed."""


# The state sets of DESIGN.md section 3, in the order operations try them. The querysets' predicates
# and the guarded UPDATEs of ``operations`` are all built from these.
TERMINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
CANCELLABLE_STATUSES = (RunStatus.PENDING, RunStatus.LEASED, RunStatus.WAITING)
SIGNALLABLE_STATUSES = (RunStatus.PENDING, RunStatus.LEASED, RunStatus.WAITING)
"""Statuses a signal may be sent to: stored until a wait of the run consumes it."""
RESUMABLE_STATUSES = (RunStatus.FAILED, RunStatus.CANCELLED)


class Transition(NamedTuple):
    """A row of DESIGN.md section 3 and the function that performs it (a dotted path, so this
    module imports none of them)."""

    from_statuses: str
    action: str
    to_status: str
    performed_by: str


# The transition index: where each state change of DESIGN.md section 3 is made. Every one is a
# guarded UPDATE (or INSERT) in that function; tests/integration/test_models.py checks that each
# path names a function.
TRANSITIONS: tuple[Transition, ...] = (
    Transition("(new)", "trigger", "pending", "django_durably.triggering.trigger_runs"),
    Transition(
        "pending, or leased with an expired lease",
        "claim",
        "leased",
        "django_durably.leases.claims.claim",
    ),
    Transition("leased", "renew", "leased", "django_durably.leases.holding.renew"),
    Transition(
        "leased", "hand back (lease expires now)", "leased", "django_durably.leases.holding.release"
    ),
    Transition(
        "leased", "persist step", "leased", "django_durably.leases.writes.persist_completed_step"
    ),
    Transition("leased", "progress", "leased", "django_durably.leases.writes.persist_progress"),
    Transition(
        "leased", "complete / fail", "completed / failed", "django_durably.leases.writes.finish"
    ),
    Transition(
        "leased",
        "fail with attempts left (retry), or release until a step's next try",
        "pending",
        "django_durably.leases.writes.finish",
    ),
    Transition(
        "leased", "end at its timeout", "pending / failed", "django_durably.timeouts.end_on_time"
    ),
    Transition(
        "leased",
        "wait (sleep, signal, children)",
        "waiting",
        "django_durably.leases.waiting.settle",
    ),
    Transition("waiting", "wake: timer due", "pending", "django_durably.waits.wake_due_runs"),
    Transition("waiting", "wake: signal", "pending", "django_durably.waits.send_signal"),
    Transition(
        "waiting", "wake: last child ended", "pending", "django_durably.leases.waiting.wake_parents"
    ),
    Transition(
        "pending, leased, waiting", "cancel", "cancelled", "django_durably.operations.cancel_run"
    ),
    Transition("failed, cancelled", "resume", "pending", "django_durably.operations.resume_run"),
    Transition(
        "completed, failed, cancelled",
        "retrigger",
        "(a new pending run)",
        "django_durably.operations.retrigger_run",
    ),
    Transition(
        "completed, failed, cancelled", "delete", "(gone)", "django_durably.operations.delete_run"
    ),
    Transition(
        "completed, failed, cancelled", "purge", "(gone)", "django_durably.operations.purge_runs"
    ),
)


class StepStatus(models.TextChoices):
    COMPLETED = "completed", _("Completed")
    """The step's function returned; its output is the checkpoint replayed on later attempts."""
    FAILED = "failed", _("Failed")
    """The step's function raised; a later attempt runs it again."""
    CANCELLED = "cancelled", _("Cancelled")
    """The run was cancelled while the step ran."""
    WAITING = "waiting", _("Waiting")
    """A durable wait's record (``step.sleep``, ``wait_for_signal``, ``wait_for_runs``), written when
    the run first waited there: ``output`` holds what it waits for and its deadline (``until``),
    computed once; a replay waits for the same. Its completed row, when the wait is over, is the
    checkpoint."""


class LogLevel(models.TextChoices):
    INFO = "info", _("Info")
    WARNING = "warning", _("Warning")
    ERROR = "error", _("Error")


class _JsonExtract(Func):
    function = "JSON_EXTRACT"
    output_field = models.TextField()


class RunQuerySet(models.QuerySet["Run"]):
    """Named predicates for each state set; the lookups and the guarded UPDATEs both use these."""

    def pending(self) -> RunQuerySet:
        return self.filter(status=RunStatus.PENDING)

    def awaiting_trigger(self) -> RunQuerySet:
        """Pending runs that new triggers coalesce into (one per job and concurrency key): not
        the runs waiting for a retry, nor runs woken from a durable wait, which continue an
        attempt rather than wait for their first."""
        return self.filter(
            status=RunStatus.PENDING, retry_at__isnull=True, waiting_for__isnull=True
        )

    def waiting(self) -> RunQuerySet:
        """Runs stopped at a durable wait (``waiting_for`` says for what)."""
        return self.filter(status=RunStatus.WAITING)

    def due_to_wake(self) -> RunQuerySet:
        """Waiting runs whose timer (a sleep's end, a wait's deadline) is due by the database
        clock: what ``waits.wake_due_runs`` makes pending (index ``durably_run_waking_idx``)."""
        return self.filter(status=RunStatus.WAITING, wake_at__lte=DatabaseNow())

    def retrying(self) -> RunQuerySet:
        """Pending runs waiting to be tried again (``retry_at`` is when)."""
        return self.filter(status=RunStatus.PENDING, retry_at__isnull=False)

    def validly_leased(self) -> RunQuerySet:
        """Runs held under a lease that is still valid by the database clock (not every run whose
        status is ``leased``: see :meth:`expired`)."""
        return self.filter(status=RunStatus.LEASED, lease_expires_at__gt=DatabaseNow())

    def expired(self) -> RunQuerySet:
        """Leased runs whose lease ran out: their worker is gone or stalled; claimable again."""
        return self.filter(status=RunStatus.LEASED, lease_expires_at__lte=DatabaseNow())

    def ready(self, queues: list[str] | None = None) -> RunQuerySet:
        """Claimable now: pending and due, or leased with an expired lease."""
        qs = self.filter(
            Q(status=RunStatus.PENDING, run_after__lte=DatabaseNow())
            | Q(status=RunStatus.LEASED, lease_expires_at__lte=DatabaseNow())
        )
        if queues:
            qs = qs.filter(queue__in=queues)
        return qs

    def held_by(self, run_id: uuid.UUID, generation: int) -> RunQuerySet:
        """The guard of every lease-holder write: still leased, under this lease generation."""
        return self.filter(pk=run_id, status=RunStatus.LEASED, lease_generation=generation)

    def finished(self) -> RunQuerySet:
        return self.filter(status__in=TERMINAL_STATUSES)

    def cancellable(self) -> RunQuerySet:
        return self.filter(status__in=CANCELLABLE_STATUSES)

    def resumable(self) -> RunQuerySet:
        return self.filter(status__in=RESUMABLE_STATUSES)

    def with_labels(self, labels: dict[str, str] | None = None, /, **more: str) -> RunQuerySet:
        """Runs carrying every given label (AND). ``with_labels({"tenant": "acme"})``.

        Keys may hold characters that are not Python identifiers (``team/region``), so pass a dict
        for those.
        """
        wanted = {**(labels or {}), **more}
        if not wanted:
            return self
        if connections[self.db].vendor == "postgresql":
            return self.filter(labels__contains=wanted)
        qs = self
        for position, (key, value) in enumerate(wanted.items()):
            # JSON_EXTRACT with an always-quoted path, so keys such as "7" or "a.b" are object keys.
            # Label keys are validated to [A-Za-z0-9._/-]+, so the path needs no further escaping.
            alias = f"_durably_label_{position}"
            path = '$."' + key.replace('"', "") + '"'
            qs = qs.alias(**{alias: _JsonExtract(F("labels"), Value(path))}).filter(
                **{alias: value}
            )
        return qs


class Run(models.Model):
    """One execution request of a job, and everything needed to finish it after a crash."""

    id = models.UUIDField(_("id"), primary_key=True, default=uuid.uuid4, editable=False)
    job_name = models.CharField(_("job"), max_length=255)
    queue = models.CharField(_("queue"), max_length=100, default=DEFAULT_QUEUE)
    priority = models.IntegerField(_("priority"), default=DEFAULT_PRIORITY)
    status = models.CharField(
        _("status"), max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING
    )
    input = models.JSONField(_("input"), null=True, blank=True)
    output = models.JSONField(_("output"), null=True, blank=True)
    error = models.JSONField(
        _("error"), null=True, blank=True, help_text=_("Exception type, message and traceback.")
    )
    # NULL, not "", means "no key": the partial unique constraints below only apply to real keys.
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, null=True, blank=True)  # noqa: DJ001
    concurrency_key = models.CharField(_("concurrency key"), max_length=255, null=True, blank=True)  # noqa: DJ001
    labels = models.JSONField(_("labels"), default=dict, blank=True)
    progress = models.JSONField(_("progress"), null=True, blank=True)
    run_after = models.DateTimeField(_("run after"), db_default=DatabaseNow())
    attempt = models.PositiveIntegerField(_("attempt"), default=0)
    failed_attempts = models.PositiveIntegerField(
        _("failed attempts"),
        default=0,
        help_text=_(
            "Attempts that failed, timed out or lost their worker since the run was triggered or "
            "last resumed: what the retry policy's max_attempts counts."
        ),
    )
    attempt_started_at = models.DateTimeField(_("attempt started at"), null=True, blank=True)
    retry_at = models.DateTimeField(
        _("retrying at"),
        null=True,
        blank=True,
        help_text=_("Set while the run waits to be tried again after a failure (its run_after)."),
    )
    wake_at = models.DateTimeField(
        _("waking at"),
        null=True,
        blank=True,
        help_text=_(
            "Set while the run waits: when its timer wakes it (a sleep's end, a wait's timeout); "
            "empty for a wait without a deadline."
        ),
    )
    waiting_for = models.JSONField(
        _("waiting for"),
        null=True,
        blank=True,
        help_text=_(
            "What the run waits for (kind: sleep, signal or runs, the step, and details); kept "
            "once it is woken until the wait returns."
        ),
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="children",
        verbose_name=_("parent run"),
        help_text=_("The run whose step.trigger() created this one."),
    )
    current_step_index = models.PositiveIntegerField(_("current step index"), default=0)
    completed_step_count = models.PositiveIntegerField(_("completed steps"), default=0)
    lease_owner = models.CharField(_("lease owner"), max_length=255, default="", blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    lease_generation = models.PositiveBigIntegerField(_("lease generation"), default=0)
    created_at = models.DateTimeField(_("created at"), db_default=DatabaseNow())
    updated_at = models.DateTimeField(_("updated at"), db_default=DatabaseNow())
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    completed_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    objects: ClassVar[RunQuerySet] = RunQuerySet.as_manager()  # type: ignore[assignment]

    disposition: str = "created"
    """Set on runs returned by a trigger: ``created``, ``idempotent`` or ``coalesced``."""

    class Meta:
        verbose_name = _("run")
        verbose_name_plural = _("runs")
        ordering = ["-created_at", "-id"]
        permissions = [
            ("cancel_run", _("Can cancel runs")),
            ("resume_run", _("Can resume runs")),
            ("retrigger_run", _("Can retrigger runs")),
            ("signal_run", _("Can send signals to runs")),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["job_name", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="durably_run_unique_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["job_name", "concurrency_key"],
                # A run waiting for its retry, or woken from a durable wait, is a continuation,
                # not a request to coalesce into: it may share its key with a newer pending run
                # (the claim serialises the two).
                condition=Q(
                    status="pending",
                    concurrency_key__isnull=False,
                    retry_at__isnull=True,
                    waiting_for__isnull=True,
                ),
                name="durably_run_one_pending_per_key",
            ),
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in RunStatus]),
                name="durably_run_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(status="leased", lease_expires_at__isnull=False) | ~Q(status="leased"),
                name="durably_run_leased_has_expiry",
            ),
        ]
        indexes = [
            # The claim: pending runs in priority order (partial, so finished history is not in it).
            models.Index(
                fields=["-priority", "run_after", "id"],
                condition=Q(status="pending"),
                name="durably_run_pending_idx",
            ),
            # Expired leases (reclaim) and the per-key exclusion check of leased runs.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="leased"),
                name="durably_run_leased_idx",
            ),
            models.Index(
                fields=["concurrency_key"],
                condition=Q(status="leased"),
                name="durably_run_leased_key_idx",
            ),
            # Waking: waiting runs by when their timer is due (partial: only waiting runs).
            models.Index(
                fields=["wake_at"],
                condition=Q(status="waiting"),
                name="durably_run_waking_idx",
            ),
            # Listing: newest first, overall and by job or status.
            models.Index(fields=["-created_at", "-id"], name="durably_run_created_idx"),
            models.Index(fields=["job_name", "-created_at"], name="durably_run_job_idx"),
            models.Index(fields=["status", "-created_at"], name="durably_run_status_idx"),
            # Retention: finished runs by age.
            models.Index(
                fields=["completed_at"],
                condition=Q(status__in=["completed", "failed", "cancelled"]),
                name="durably_run_finished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_name} {self.id} ({self.status})"

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.job_name} {self.status}>"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def attempt_history(self) -> list[RunAttempt]:
        """Every ended attempt of the run, in order: its ``RunAttempt`` rows, then, for a completed
        run, the attempt that completed it, built from the run's own fields (number ``attempt``,
        worker ``lease_owner``, from ``attempt_started_at`` to ``completed_at``; not saved: the run
        is its record, so the common end of a run costs no insert). An attempt still running is not
        in it."""
        history = list(RunAttempt.objects.using(self._state.db).filter(run=self.pk))
        completing = self.completed_attempt()
        if completing is not None:
            history.append(completing)
        return history

    def completed_attempt(self) -> RunAttempt | None:
        """The attempt that completed the run (unsaved; see :meth:`attempt_history`), or ``None``."""
        if self.status != RunStatus.COMPLETED or self.completed_at is None:
            return None
        return RunAttempt(
            run=self,
            number=self.attempt,
            worker=self.lease_owner,
            started_at=self.attempt_started_at,
            ended_at=self.completed_at,
            outcome=AttemptOutcome.COMPLETED,
        )


class Step(models.Model):
    """One attempt at a named step of a run: the checkpoint when completed."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the (run, index) index serves lookups by run.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="steps", verbose_name=_("run"), db_index=False
    )
    index = models.PositiveIntegerField(_("index"))
    name = models.CharField(_("name"), max_length=255)
    status = models.CharField(_("status"), max_length=16, choices=StepStatus.choices)
    attempt = models.PositiveIntegerField(
        _("run attempt"), default=1, help_text=_("The attempt of the run this row was written in.")
    )
    step_attempt = models.PositiveIntegerField(
        _("step attempt"),
        default=1,
        help_text=_("Which try of this step's function this row records (1, 2, ... on retries)."),
    )
    output = models.JSONField(_("output"), null=True, blank=True)
    error = models.JSONField(_("error"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"))
    completed_at = models.DateTimeField(_("finished at"), db_default=DatabaseNow())

    class Meta:
        verbose_name = _("step")
        verbose_name_plural = _("steps")
        ordering = ["run_id", "index", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "name"],
                condition=Q(status="completed"),
                name="durably_step_one_completed_per_name",
            ),
        ]
        indexes = [models.Index(fields=["run", "index"], name="durably_step_run_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def duration_seconds(self) -> float:
        return (self.completed_at - self.started_at).total_seconds()


class AttemptOutcome(models.TextChoices):
    COMPLETED = "completed", _("Completed")
    """The job returned: the run completed."""
    FAILED = "failed", _("Failed")
    """The job raised: the run failed, or was scheduled to be retried (``retry_at``)."""
    TIMED_OUT = "timed_out", _("Timed out")
    """The attempt, or a step call in it, ran past its timeout; the worker ended it."""
    STEP_RETRY = "step_retry", _("Released for a step retry")
    """A step failed and its next try is too far off to wait for in place: the run was released
    until then (``retry_at``)."""
    CANCELLED = "cancelled", _("Cancelled")
    """An operator cancelled the run during this attempt."""
    LOST = "lost", _("Worker lost")
    """The worker stopped renewing the lease (it died, froze or lost the database) and another
    worker reclaimed the run."""
    RELEASED = "released", _("Handed back")
    """The worker handed the run back as it shut down."""
    WAITING = "waiting", _("Released to wait")
    """The job reached a durable wait (sleep, signal, child runs): the run was released, waiting,
    until it is woken."""


class RunAttempt(models.Model):
    """One attempt of a run that did not complete it: from a claim to how it ended.

    Written by the statement that ends the attempt (the worker's end of the run, a cancel, a hand
    back, or the claim that finds the worker lost), so the history can never disagree with the run.
    The attempt that completes a run has no row: the run is its record, and
    :meth:`Run.attempt_history` adds it.
    """

    id = models.BigAutoField(primary_key=True)
    # No database constraint: the row is inserted by the statement that ends an attempt, on the hot
    # path, where a foreign key check would look the run up and lock it once more for each row
    # (the run is there: the same statement has just updated it). Deleting a run deletes its
    # attempts by the ORM's cascade, as every delete and purge of django-durably does.
    run = models.ForeignKey(
        Run,
        on_delete=models.CASCADE,
        related_name="attempts",
        verbose_name=_("run"),
        db_index=False,
        db_constraint=False,
    )
    number = models.PositiveIntegerField(_("attempt"))
    worker = models.CharField(_("worker"), max_length=255, default="", blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), db_default=DatabaseNow())
    outcome = models.CharField(_("outcome"), max_length=16, choices=AttemptOutcome.choices)
    error = models.JSONField(_("error"), null=True, blank=True)
    retry_at = models.DateTimeField(
        _("retry at"),
        null=True,
        blank=True,
        help_text=_("When the run was scheduled to be tried again after this attempt, if it was."),
    )

    class Meta:
        verbose_name = _("attempt")
        verbose_name_plural = _("attempts")
        ordering = ["run_id", "number", "id"]
        indexes = [models.Index(fields=["run", "number"], name="durably_attempt_run_idx")]

    def __str__(self) -> str:
        return f"attempt {self.number} ({self.outcome})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class Signal(models.Model):
    """A named message sent to a run (``send_signal``), kept until a ``step.wait_for_signal`` of
    that name consumes it: each wait takes the oldest unconsumed one, so a signal sent before the
    run waits is not lost. Sent again with the same ``idempotency_key``, it is stored once."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the (run, name, id) index serves lookups by run.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="signals", verbose_name=_("run"), db_index=False
    )
    name = models.CharField(_("name"), max_length=255)
    payload: Any = models.JSONField(_("payload"), null=True, blank=True)
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, null=True, blank=True)  # noqa: DJ001
    sent_by = models.CharField(_("sent by"), max_length=255, default="", blank=True)
    source = models.CharField(_("source"), max_length=32, default="python")
    sent_at = models.DateTimeField(_("sent at"), db_default=DatabaseNow())
    consumed_at = models.DateTimeField(_("consumed at"), null=True, blank=True)
    consumed_by_step = models.CharField(
        _("consumed by step"), max_length=255, default="", blank=True
    )

    class Meta:
        verbose_name = _("signal")
        verbose_name_plural = _("signals")
        ordering = ["run_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="durably_signal_unique_idempotency_key",
            ),
        ]
        indexes = [models.Index(fields=["run", "name", "id"], name="durably_signal_run_idx")]

    def __str__(self) -> str:
        state = "consumed" if self.consumed_at else "unconsumed"
        return f"{self.name} ({state})"

    @property
    def is_consumed(self) -> bool:
        return self.consumed_at is not None


class RunLog(models.Model):
    """A line logged by a job through ``step.log``."""

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the (run, id) index serves lookups by run.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="logs", verbose_name=_("run"), db_index=False
    )
    step_name = models.CharField(_("step"), max_length=255, default="", blank=True)
    level = models.CharField(_("level"), max_length=16, choices=LogLevel.choices)
    message = models.TextField(_("message"))
    data: Any = models.JSONField(_("data"), default=dict, blank=True)
    attempt = models.PositiveIntegerField(_("attempt"), default=1)
    created_at = models.DateTimeField(_("created at"), db_default=DatabaseNow())

    class Meta:
        verbose_name = _("log line")
        verbose_name_plural = _("log lines")
        ordering = ["run_id", "id"]
        indexes = [models.Index(fields=["run", "id"], name="durably_runlog_run_idx")]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:80]}"


class AuditAction(models.TextChoices):
    CANCEL = "cancel", _("Cancel")
    RESUME = "resume", _("Resume")
    RETRIGGER = "retrigger", _("Retrigger")
    DELETE = "delete", _("Delete")
    SIGNAL = "signal", _("Send signal")


class AuditRecord(models.Model):
    """One operator action on a run, written in the same transaction as the change it records.

    ``run_uuid`` keeps the id after the run is deleted (``run`` is then NULL).
    """

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(
        Run,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="audit_records",
        verbose_name=_("run"),
    )
    run_uuid = models.UUIDField(_("run id"))
    job_name = models.CharField(_("job"), max_length=255)
    action = models.CharField(_("action"), max_length=16, choices=AuditAction.choices)
    actor = models.CharField(_("actor"), max_length=255, default="", blank=True)
    source = models.CharField(_("source"), max_length=32, default="python")
    from_status = models.CharField(_("from status"), max_length=16, choices=RunStatus.choices)
    to_status = models.CharField(_("to status"), max_length=16, default="", blank=True)
    detail: Any = models.JSONField(_("detail"), default=dict, blank=True)
    created_at = models.DateTimeField(_("at"), db_default=DatabaseNow())

    class Meta:
        verbose_name = _("audit record")
        verbose_name_plural = _("audit records")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["run_uuid", "created_at"], name="durably_audit_run_idx")]

    def __str__(self) -> str:
        who = self.actor or self.source
        return f"{self.action} {self.run_uuid} by {who} ({self.from_status} -> {self.to_status or '-'})"
