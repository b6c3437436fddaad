"""The run list and a run's page."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext_lazy as _

from django_durably.admin.actions import RunOperationsAdmin
from django_durably.admin.display import (
    format_duration,
    labels_html,
    pretty_error,
    pretty_json,
    progress_bar,
    run_duration,
    short_id,
    status_badge,
)
from django_durably.admin.inlines import AuditRecordInline, RunLogInline, StepInline
from django_durably.models import Run

LIST_DEFERRED_FIELDS = ("input", "output", "error")
"""Large JSON the run list never shows, so it never loads it."""

ID_PREFIX = re.compile(r"[0-9a-fA-F]{4}[0-9a-fA-F-]{0,32}")
"""A search term that may be the start of a run id (at least 4 hex digits)."""


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


class JobFilter(admin.SimpleListFilter):
    """The jobs that have runs."""

    title = _("job")
    parameter_name = "job"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = (
            model_admin.get_queryset(request)
            .order_by("job_name")
            .values_list("job_name", flat=True)
            .distinct()
        )
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(job_name=value) if value else queryset


class RunChangeList(ChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        return super().get_queryset(request, exclude_parameters).defer(*LIST_DEFERRED_FIELDS)


@admin.register(Run)
class RunAdmin(RunOperationsAdmin):
    list_display = [
        "short_id",
        "job_name",
        "status_display",
        "queue",
        "progress_display",
        "attempt",
        "created_at",
        "started_at",
        "completed_at",
        "duration",
    ]
    list_display_links = ["short_id"]
    list_filter = ["status", JobFilter, "queue", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["job_name", "idempotency_key"]  # and more: see get_search_results
    search_help_text = _(
        "Search by run id (whole, or its first characters), job, idempotency key or label value."
    )
    show_full_result_count = False
    inlines = [StepInline, RunLogInline, AuditRecordInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "job_name",
                    "status_display",
                    "queue",
                    "priority",
                    "attempt",
                    "labels_display",
                    "idempotency_key",
                    "concurrency_key",
                ]
            },
        ),
        (_("Progress"), {"fields": ["progress_detail", "completed_step_count"]}),
        (
            _("Timing"),
            {
                "fields": [
                    "created_at",
                    "run_after",
                    "started_at",
                    "completed_at",
                    "duration",
                    "updated_at",
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
                    "lease_expires_at",
                    "lease_generation",
                    "current_step_index",
                ],
            },
        ),
    ]
    display_fields = [
        "status_display",
        "labels_display",
        "progress_detail",
        "duration",
        "input_display",
        "output_display",
        "error_display",
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
        """The run's sections, without Output or Error when it has none."""
        empty = set()
        if obj is not None and obj.output is None:
            empty.add("output_display")
        if obj is not None and not obj.error:
            empty.add("error_display")
        return [
            (name, options)
            for name, options in self.fieldsets or []
            if not empty.issuperset(options["fields"])
        ]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RunChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        for term in search_terms(search_term):
            queryset = queryset.filter(run_search(term))
        return queryset, False

    # -- columns and fields --------------------------------------------------------------------

    @admin.display(description=_("id"), ordering="id")
    def short_id(self, run: Run) -> SafeString:
        return format_html('<code title="{}">{}</code>', run.pk, short_id(run.pk))

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, run: Run) -> SafeString:
        return status_badge(run.status)

    @admin.display(description=_("progress"))
    def progress_display(self, run: Run) -> SafeString | str:
        return progress_bar(run.progress) or self.get_empty_value_display()

    @admin.display(description=_("progress"))
    def progress_detail(self, run: Run) -> SafeString | str:
        return progress_bar(run.progress, with_message=True) or self.get_empty_value_display()

    @admin.display(description=_("duration"))
    def duration(self, run: Run) -> str:
        elapsed = run_duration(run)
        return format_duration(elapsed) if elapsed is not None else self.get_empty_value_display()

    @admin.display(description=_("labels"))
    def labels_display(self, run: Run) -> SafeString | str:
        return labels_html(run.labels) or self.get_empty_value_display()

    @admin.display(description=_("input"))
    def input_display(self, run: Run) -> SafeString:
        return pretty_json(run.input)

    @admin.display(description=_("output"))
    def output_display(self, run: Run) -> SafeString | str:
        return pretty_json(run.output) if run.output is not None else self.get_empty_value_display()

    @admin.display(description=_("error"))
    def error_display(self, run: Run) -> SafeString | str:
        return pretty_error(run.error) if run.error else self.get_empty_value_display()
