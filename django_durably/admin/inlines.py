"""A run's attempt timeline, steps, log lines and audit trail: read-only tables on its page (the
timeline is rendered by the run's page, the others are inlines)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_durably.admin.display import (
    audit_detail,
    error_summary,
    format_duration,
    format_time,
    format_time_ahead,
    json_summary,
    outcome_badge,
    short_error,
    status_badge,
    transition,
    try_label,
)
from django_durably.models import AuditRecord, Run, RunAttempt, RunLog, Step

if TYPE_CHECKING:
    # Generic in django-stubs only: Django's admin classes cannot be subscripted at runtime.
    _RunInline = admin.TabularInline[Any, Run]
    _RunInlineFormSet = BaseInlineFormSet[Any, Run, Any]
else:
    _RunInline = admin.TabularInline
    _RunInlineFormSet = BaseInlineFormSet

INLINE_ROW_LIMIT = 200
"""Rows shown per table: a run may have thousands of steps or log lines."""


class FirstRowsFormSet(_RunInlineFormSet):
    """Shows at most :data:`INLINE_ROW_LIMIT` rows and tells how many more there are."""

    def get_queryset(self) -> QuerySet[Any]:
        if not hasattr(self, "_first_rows"):
            self._first_rows = super().get_queryset()[:INLINE_ROW_LIMIT]
        return self._first_rows

    def hidden_rows(self) -> int:
        if not hasattr(self, "_hidden_rows"):
            shown = len(self.get_queryset())
            total = super().get_queryset().count() if shown >= INLINE_ROW_LIMIT else shown
            self._hidden_rows = total - shown
        return self._hidden_rows


class HistoryInline(_RunInline):
    """A read-only table, shown to whoever may view the run."""

    @admin.display(description=_("at"))
    def at(self, row: Any) -> SafeString | str:
        """When the row was written, to the second."""
        return format_time(row.created_at) or self.get_empty_value_display()

    template = "admin/durably/run/history_inline.html"
    formset = FirstRowsFormSet
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        user = request.user
        return user.has_perm("durably.view_run") or user.has_perm("durably.change_run")

    def has_add_permission(self, request: HttpRequest, obj: Run | None) -> bool:  # type: ignore[override]
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False


AttemptCell = Callable[[RunAttempt], SafeString | str | None]


@dataclass(frozen=True)
class AttemptColumn:
    """A column of the attempt timeline: its class (``field-<name>``), header and cell (``None``:
    the admin's empty value)."""

    name: str
    label: str | Promise
    cell: AttemptCell


def _attempt_duration(attempt: RunAttempt) -> str | None:
    seconds = attempt.duration_seconds
    return None if seconds is None else format_duration(timedelta(seconds=seconds))


ATTEMPT_COLUMNS = (
    AttemptColumn("number", _("attempt"), lambda attempt: str(attempt.number)),
    AttemptColumn("outcome_display", _("outcome"), lambda attempt: outcome_badge(attempt.outcome)),
    AttemptColumn("worker_display", _("worker"), lambda attempt: attempt.worker or None),
    AttemptColumn("started", _("started at"), lambda attempt: format_time(attempt.started_at)),
    AttemptColumn("ended", _("ended at"), lambda attempt: format_time(attempt.ended_at)),
    AttemptColumn("duration", _("duration"), _attempt_duration),
    AttemptColumn(
        "error_summary",
        _("error"),
        lambda attempt: short_error(attempt.error) if attempt.error else None,
    ),
    # When the run was to be tried again; while that is ahead, how soon.
    AttemptColumn(
        "retry_at_display", _("retry at"), lambda attempt: format_time_ahead(attempt.retry_at)
    ),
)


class AttemptTimeline:
    """The run's attempts, first to last: how each ended, on which worker, and when it was to be
    tried again. Its first :data:`INLINE_ROW_LIMIT` rows, as every table on the page.

    Not an inline: the attempt that completed a run has no ``RunAttempt`` row (the run is its
    record, :meth:`Run.completed_attempt`), and an inline's formset shows stored rows only. So the
    run page renders this table itself (``attempt_timeline.html``, the markup of the inlines),
    with the stored rows and then that attempt, in the queries of the inline it replaces: the
    first rows, and their count when there may be more. The completed attempt costs none.
    """

    prefix = "attempts"
    heading = RunAttempt._meta.verbose_name_plural
    columns = ATTEMPT_COLUMNS

    def __init__(self, run: Run, *, empty: str) -> None:
        stored = run.attempts.order_by("number", "id")
        attempts = list(stored[:INLINE_ROW_LIMIT])
        total = stored.count() if len(attempts) >= INLINE_ROW_LIMIT else len(attempts)
        completed = run.completed_attempt()
        if completed is not None:
            total += 1
            if len(attempts) < INLINE_ROW_LIMIT:
                attempts.append(completed)
        self.rows = [
            [(column.name, column.cell(attempt) or empty) for column in self.columns]
            for attempt in attempts
        ]
        self.hidden_rows = total - len(attempts)


class StepInline(HistoryInline):
    model = Step
    fields = readonly_fields = (
        "index",
        "name",
        "status_display",
        "attempt",
        "started",
        "duration",
        "output_summary",
        "error_summary",
    )

    @admin.display(description=_("started at"))
    def started(self, step: Step) -> SafeString | str:
        return format_time(step.started_at) or self.get_empty_value_display()

    @admin.display(description=_("status"))
    def status_display(self, step: Step) -> SafeString:
        """The badge, and which try of the step's function the row records when not the first."""
        if step.step_attempt <= 1:
            return status_badge(step.status)
        return format_html(
            '{} <span class="durably-step-try">{}</span>',
            status_badge(step.status),
            try_label(step.step_attempt),
        )

    @admin.display(description=_("duration"))
    def duration(self, step: Step) -> str:
        return format_duration(timedelta(seconds=step.duration_seconds))

    @admin.display(description=_("output"))
    def output_summary(self, step: Step) -> SafeString | str:
        if step.output is None:
            return self.get_empty_value_display()
        return json_summary(step.output)

    @admin.display(description=_("error"))
    def error_summary(self, step: Step) -> SafeString | str:
        return error_summary(step.error) if step.error else self.get_empty_value_display()


class RunLogInline(HistoryInline):
    model = RunLog
    fields = readonly_fields = (
        "at",
        "level",
        "step_name",
        "attempt",
        "message",
        "data_summary",
    )

    @admin.display(description=_("data"))
    def data_summary(self, log: RunLog) -> SafeString | str:
        return json_summary(log.data) if log.data else self.get_empty_value_display()


class AuditRecordInline(HistoryInline):
    model = AuditRecord
    verbose_name_plural = _("audit trail")
    fields = readonly_fields = (
        "at",
        "action",
        "actor",
        "source",
        "transition",
        "detail_summary",
    )

    @admin.display(description=_("status change"))
    def transition(self, record: AuditRecord) -> str:
        return transition(record)

    @admin.display(description=_("detail"))
    def detail_summary(self, record: AuditRecord) -> SafeString | str:
        return audit_detail(record, self.admin_site.name) or self.get_empty_value_display()
