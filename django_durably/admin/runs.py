"""The run list and a run's page."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_durably.admin.attempts import (
    attempt_note,
    is_retrying,
    registered_job,
    timeout_text,
)
from django_durably.admin.display import (
    LIST_LABELS,
    format_duration,
    format_time,
    format_time_ahead,
    labels_html,
    pretty_error,
    pretty_json,
    progress_bar,
    relative,
    run_duration,
    run_title,
    run_url,
    short_id,
    status_badge,
    time_text,
)
from django_durably.admin.filters import (
    STATUS_PARAMETERS,
    CheckedChangeList,
    JobFilter,
    ParentFilter,
    RetryingFilter,
)
from django_durably.admin.inlines import (
    AttemptTimeline,
    AuditRecordInline,
    RunLogInline,
    StepInline,
)
from django_durably.admin.signalling import RunSignalAdmin
from django_durably.admin.waits import (
    WAIT_FIELDS,
    RunWaitsAdmin,
    hidden_wait_fields,
    list_wait_note,
    run_link,
)
from django_durably.models import AuditAction, AuditRecord, Run, RunStatus

LIST_DEFERRED_FIELDS = ("input", "output", "error")
"""Large JSON the run list never shows, so it never loads it."""

ID_PREFIX = re.compile(r"[0-9a-fA-F]{4}[0-9a-fA-F-]{0,32}")
"""A search term that may be the start of a run id (at least 4 hex digits)."""

RETRIGGER_KEY = re.compile(
    r"retrigger:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):"
)
"""The idempotency key a keyed retrigger gives the new run: it starts with the original's id."""

_NOT_LOOKED_UP = object()


def search_terms(search_term: str) -> Iterator[str]:
    """The words of a search, as Django's admin splits them ("quoted phrases" stay whole)."""
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        if bit:
            yield bit


def run_search(term: str) -> Q:
    """Runs whose job, idempotency key or labels contain ``term``, or whose id is or starts
    with it. Labels are matched as JSON text, which works on SQLite and PostgreSQL alike."""
    query = Q(job_name__icontains=term) | Q(idempotency_key__icontains=term)
    query |= Q(labels__icontains=term)
    escaped = json.dumps(term)[1:-1]
    if escaped != term:  # SQLite keeps the JSON text escaped: "caf\u00e9", "say \"hi\"".
        query |= Q(labels__icontains=escaped)
    try:
        return query | Q(pk=uuid.UUID(term))
    except ValueError:
        pass
    if ID_PREFIX.fullmatch(term):
        query |= Q(id__istartswith=term)
    return query


JOB_NAME_BREAKS = re.compile(r"(?<=[._])")
"""Where a job's name may wrap in a narrow column: after a dot or an underscore."""


def breakable(name: str) -> SafeString:
    """``name``, escaped, with a ``<wbr>`` where it may wrap."""
    return format_html_join(
        mark_safe("<wbr>"), "{}", ((part,) for part in JOB_NAME_BREAKS.split(name))
    )  # noqa: S308 - a constant


def retrigger_record(run: Run) -> AuditRecord | None:
    """The audit record of the retrigger that created ``run``, or None (looked up once per run).

    The record names the run it created, whatever the key. A keyed retrigger also put the
    original's id in the new run's key, which narrows the lookup to that run's records (indexed);
    the key alone proves nothing, since anyone may trigger a run with a key that looks like one.
    """
    cached = run.__dict__.get("_durably_retrigger_record", _NOT_LOOKED_UP)
    if cached is None or isinstance(cached, AuditRecord):
        return cached
    records = AuditRecord.objects.filter(
        action=AuditAction.RETRIGGER, detail__new_run_id=str(run.pk)
    )
    if match := RETRIGGER_KEY.match(run.idempotency_key or ""):
        records = records.filter(run_uuid=match[1])
    record = records.order_by("id").first()
    run.__dict__["_durably_retrigger_record"] = record
    return record


class RunChangeList(CheckedChangeList):
    status_parameters = STATUS_PARAMETERS

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        return super().get_queryset(request, exclude_parameters).defer(*LIST_DEFERRED_FIELDS)


@admin.register(Run)
class RunAdmin(RunSignalAdmin, RunWaitsAdmin):
    # What fits beside the navigation and the filters at 1280 px: the queue goes under the job,
    # the attempt (when not the first) and the progress under the status; started and finished
    # are in the duration's tooltip and on the run's page.
    list_display = [
        "short_id",
        "job_cell",
        "status_cell",
        "labels_list",
        "created_cell",
        "duration",
    ]
    list_display_links = ["short_id"]
    list_filter = [
        "status",
        RetryingFilter,
        JobFilter,
        ParentFilter,
        "queue",
        ("created_at", admin.DateFieldListFilter),
    ]
    search_fields = ["job_name", "idempotency_key"]  # and more: see get_search_results
    search_help_text = _(
        "Search by run id (whole, or its first characters), job, idempotency key or label value."
    )
    show_full_result_count = False
    inlines = [StepInline, RunLogInline, AuditRecordInline]  # after the attempt timeline
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "job_name",
                    "status_display",
                    "waiting_for_display",
                    "queue",
                    "priority",
                    "attempt",
                    "failed_attempts",
                    "retry_policy",
                    "timeout",
                    "labels_display",
                    "idempotency_key",
                    "retriggered_from",
                    "parent_display",
                    "concurrency_key",
                ]
            },
        ),
        (_("Progress"), {"fields": ["progress_detail", "completed_step_count"]}),
        (
            _("Timing"),
            {
                "fields": [
                    "created",
                    "run_after_display",
                    "retrying_at",
                    "waking_at",
                    "started",
                    "finished",
                    "duration",
                    "updated",
                ]
            },
        ),
        (_("Input"), {"fields": ["input_display"]}),
        (_("Output"), {"fields": ["output_display"]}),
        (_("Error"), {"fields": ["error_display"]}),
        (
            _("Lease"),
            {
                "classes": ["collapse"],
                "fields": [
                    "lease_owner",
                    "lease_expires",
                    "lease_generation",
                    "current_step_index",
                ],
            },
        ),
    ]
    display_fields = [
        "status_display",
        "labels_display",
        "retriggered_from",
        "progress_detail",
        "created",
        "run_after_display",
        "retrying_at",
        "retry_policy",
        "timeout",
        "started",
        "finished",
        "duration",
        "updated",
        "lease_expires",
        "input_display",
        "output_display",
        "error_display",
        *WAIT_FIELDS,
    ]

    # -- read-only history ---------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        """Off, so Django's unguarded delete view and ``delete_selected`` never run; the
        ``delete_runs`` action deletes finished runs through ``operations``."""
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Run | None = None) -> list[str]:
        return [field.name for field in Run._meta.concrete_fields] + self.display_fields

    def get_fieldsets(self, request: HttpRequest, obj: Run | None = None) -> Any:
        """The run's sections, without Output or Error when it has none. A retriggered run says
        which run it came from instead of showing the key the retrigger made. The retry policy and
        timeout are its job's, when the job is registered here."""
        hidden = hidden_wait_fields(obj)
        if obj is None or registered_job(obj.job_name) is None:
            hidden.update({"retry_policy", "timeout"})
        if obj is None or not is_retrying(obj):
            hidden.add("retrying_at")
        if obj is not None and obj.output is None:
            hidden.add("output_display")
        if obj is not None and not obj.error:
            hidden.add("error_display")
        if obj is None or retrigger_record(obj) is None:
            hidden.add("retriggered_from")
        else:
            hidden.add("idempotency_key")
        fieldsets = []
        for name, options in self.fieldsets or []:
            fields = [field for field in options["fields"] if field not in hidden]
            if fields:
                fieldsets.append((name, {**options, "fields": fields}))
        return fieldsets

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,  # noqa: FBT001, FBT002 - Django's signature
        change: bool = False,  # noqa: FBT001, FBT002
        form_url: str = "",
        obj: Run | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["subtitle"] = run_title(obj)  # Django's is str(run): the stored status
            context["durably_attempts"] = AttemptTimeline(obj, empty=self.get_empty_value_display())
        return super().render_change_form(request, context, add, change, form_url, obj)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The run's page, whose audit trail is its history (Django's log has nothing for runs,
        and its page would title the run with its stored status)."""
        return HttpResponseRedirect(
            run_url(unquote(object_id), self.admin_site.name) + "#audit_records-group"
        )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RunChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        for term in search_terms(search_term):
            queryset = queryset.filter(run_search(term))
        return queryset, False

    # -- columns and fields --------------------------------------------------------------------

    @admin.display(description=_("id"))
    def short_id(self, run: Run) -> SafeString:
        return format_html('<code title="{}">{}</code>', run.pk, short_id(run.pk))

    @admin.display(description=_("job"), ordering="job_name")
    def job_cell(self, run: Run) -> SafeString:
        """The job's name, which may break after a dot or an underscore, its queue, and the
        run whose step triggered it."""
        cell = format_html(
            '<span class="durably-job">{}</span><div class="durably-queue">{} {}</div>',
            breakable(run.job_name),
            gettext("queue"),
            run.queue,
        )
        if run.parent_id is None:
            return cell
        return format_html(
            '{}<div class="durably-parent">{} {}</div>',
            cell,
            gettext("child of"),
            run_link(run.parent_id, self.admin_site.name),
        )

    @admin.display(description=_("status"), ordering="status")
    def status_cell(self, run: Run) -> SafeString:
        """The badge, what a waiting run waits for, when a retry is due, the attempt when it is
        not the first (or is retried), and the progress."""
        parts = [status_badge(run.status)]
        wait = list_wait_note(run)
        if wait is not None:
            parts.append(format_html('<div class="durably-waiting">{}</div>', wait))
        retrying = is_retrying(run)
        if retrying:
            parts.append(
                format_html(
                    '<div class="durably-retrying">{} {}</div>',
                    gettext("retrying at"),
                    format_time(run.retry_at),
                )
            )
        if run.attempt > 1 or (retrying and run.attempt > 0):
            text, tooltip = attempt_note(run)
            if tooltip:
                parts.append(
                    format_html('<div class="durably-attempt" title="{}">{}</div>', tooltip, text)
                )
            else:
                parts.append(format_html('<div class="durably-attempt">{}</div>', text))
        bar = progress_bar(run.progress)
        if bar is not None:
            parts.append(format_html('<div class="durably-progress-cell">{}</div>', bar))
        return format_html_join("", "{}", ((part,) for part in parts))

    @admin.display(description=_("status"))
    def status_display(self, run: Run) -> SafeString:
        return status_badge(run.status)

    @admin.display(description=_("created"), ordering="created_at")
    def created_cell(self, run: Run) -> SafeString | str:
        return format_time(run.created_at) or self.get_empty_value_display()

    @admin.display(description=_("progress"))
    def progress_detail(self, run: Run) -> SafeString | str:
        return progress_bar(run.progress, with_message=True) or self.get_empty_value_display()

    @admin.display(description=_("duration"))
    def duration(self, run: Run) -> SafeString | str:
        """First claim to finish (to now while running), with both times in its tooltip."""
        elapsed = run_duration(run)
        if elapsed is None or run.started_at is None:
            return self.get_empty_value_display()
        times = [gettext("started %(time)s") % {"time": time_text(run.started_at)}]
        if run.completed_at is not None:
            times.append(gettext("finished %(time)s") % {"time": time_text(run.completed_at)})
        return format_html('<span title="{}">{}</span>', ", ".join(times), format_duration(elapsed))

    @admin.display(description=_("retry policy"))
    def retry_policy(self, run: Run) -> str:
        """The job's policy (``5 attempts, 1s x2 up to 600s, jitter``), as this process has it."""
        job = registered_job(run.job_name)
        return job.retry_policy.describe() if job is not None else self.get_empty_value_display()

    @admin.display(description=_("timeout"))
    def timeout(self, run: Run) -> str:
        """How long one attempt of the job may take."""
        job = registered_job(run.job_name)
        return timeout_text(job.timeout) if job is not None else self.get_empty_value_display()

    @admin.display(description=_("labels"))
    def labels_list(self, run: Run) -> SafeString | str:
        return labels_html(run.labels, limit=LIST_LABELS) or self.get_empty_value_display()

    @admin.display(description=_("labels"))
    def labels_display(self, run: Run) -> SafeString | str:
        return labels_html(run.labels) or self.get_empty_value_display()

    @admin.display(description=_("retriggered from"))
    def retriggered_from(self, run: Run) -> SafeString | str:
        record = retrigger_record(run)
        if record is None:
            return self.get_empty_value_display()
        original = format_html(
            '<code title="{}">{}</code>', record.run_uuid, short_id(record.run_uuid)
        )
        if record.run_id is None:
            original = format_html("{} ({})", original, gettext("deleted"))
        else:
            original = format_html(
                '<a href="{}">{}</a>', run_url(record.run_uuid, self.admin_site.name), original
            )
        by = record.actor or record.source
        return format_html(
            "{} {}",
            original,
            gettext("by %(actor)s at %(time)s")
            % {"actor": by, "time": time_text(record.created_at)},
        )

    # -- times, to the second ------------------------------------------------------------------

    @admin.display(description=_("created at"), ordering="created_at")
    def created(self, run: Run) -> SafeString | str:
        return format_time(run.created_at) or self.get_empty_value_display()

    @admin.display(description=_("run after"))
    def run_after_display(self, run: Run) -> SafeString | str:
        shown = format_time(run.run_after)
        if shown is None:
            return self.get_empty_value_display()
        if run.status == RunStatus.PENDING and run.run_after > timezone.now():
            return format_html("{} ({})", shown, relative(run.run_after))
        return shown

    @admin.display(description=_("retrying at"))
    def retrying_at(self, run: Run) -> SafeString | str:
        """When a run that failed is tried again, while it waits for that."""
        return format_time_ahead(run.retry_at) or self.get_empty_value_display()

    @admin.display(description=_("started at"))
    def started(self, run: Run) -> SafeString | str:
        """When the first attempt started; a run that is pending again, or waiting, says so."""
        shown = format_time(run.started_at)
        if shown is None or run.started_at is None:
            return self.get_empty_value_display()
        if run.status in (RunStatus.PENDING, RunStatus.WAITING):
            if run.status == RunStatus.WAITING:
                waiting = gettext("Not running: waiting, without a worker.")
            elif is_retrying(run):
                waiting = gettext("Not running: waiting to be tried again.")
            else:
                waiting = gettext("Not running: pending again, waiting for a worker.")
            return format_html(
                '<span class="durably-pending-again">{}</span> {}',
                waiting,
                format_html(gettext("Its first attempt started at {}."), shown),
            )
        if run.attempt > 1:
            note = ngettext(
                "the first of %(count)d attempt", "the first of %(count)d attempts", run.attempt
            ) % {"count": run.attempt}
        else:
            note = gettext("%(duration)s after it was created") % {
                "duration": format_duration(run.started_at - run.created_at)
            }
        return format_html("{} ({})", shown, note)

    @admin.display(description=_("finished at"))
    def finished(self, run: Run) -> SafeString | str:
        return format_time(run.completed_at) or self.get_empty_value_display()

    @admin.display(description=_("updated at"))
    def updated(self, run: Run) -> SafeString | str:
        return format_time(run.updated_at) or self.get_empty_value_display()

    @admin.display(description=_("lease expires at"))
    def lease_expires(self, run: Run) -> SafeString | str:
        shown = format_time(run.lease_expires_at)
        if shown is None or run.lease_expires_at is None:
            return self.get_empty_value_display()
        if run.status != RunStatus.LEASED:
            return shown
        return format_html("{} ({})", shown, relative(run.lease_expires_at))

    @admin.display(description=_("input"))
    def input_display(self, run: Run) -> SafeString:
        return pretty_json(run.input)

    @admin.display(description=_("output"))
    def output_display(self, run: Run) -> SafeString | str:
        return pretty_json(run.output) if run.output is not None else self.get_empty_value_display()

    @admin.display(description=_("error"))
    def error_display(self, run: Run) -> SafeString | str:
        return pretty_error(run.error) if run.error else self.get_empty_value_display()
