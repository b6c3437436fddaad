"""The audit trail of operator actions, read-only."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_durably.admin.display import (
    audit_detail,
    audit_title,
    format_time,
    run_url,
    short_id,
    transition,
)
from django_durably.admin.filters import CheckedChangeList
from django_durably.admin.runs import ID_PREFIX, search_terms
from django_durably.models import AuditRecord

if TYPE_CHECKING:
    _AuditRecordAdmin = admin.ModelAdmin[AuditRecord]
else:  # Generic in django-stubs only: ModelAdmin cannot be subscripted at runtime.
    _AuditRecordAdmin = admin.ModelAdmin


@admin.register(AuditRecord)
class AuditRecordAdmin(_AuditRecordAdmin):
    list_display = [
        "at",
        "action",
        "run_link",
        "job_name",
        "actor",
        "source",
        "transition",
    ]
    list_filter = ["action", "source"]
    search_fields = ["actor"]  # and the run id: see get_search_results
    search_help_text = _("Search by run id (whole, or its first characters) or actor.")
    show_full_result_count = False
    fields = readonly_fields = (
        "at",
        "action",
        "run_link",
        "job_name",
        "actor",
        "source",
        "transition",
        "detail_display",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditRecord | None = None) -> bool:
        return False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CheckedChangeList

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,  # noqa: FBT001, FBT002 - Django's signature
        change: bool = False,  # noqa: FBT001, FBT002
        form_url: str = "",
        obj: AuditRecord | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["subtitle"] = audit_title(obj)  # Django's is str(record): stored statuses
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[AuditRecord], search_term: str
    ) -> tuple[QuerySet[AuditRecord], bool]:
        for term in search_terms(search_term):
            query = Q(actor__icontains=term)
            try:
                query |= Q(run_uuid=uuid.UUID(term))
            except ValueError:
                if ID_PREFIX.fullmatch(term):
                    query |= Q(run_uuid__istartswith=term)
            queryset = queryset.filter(query)
        return queryset, False

    @admin.display(description=_("at"), ordering="created_at")
    def at(self, record: AuditRecord) -> SafeString | str:
        return format_time(record.created_at) or self.get_empty_value_display()

    @admin.display(description=_("run"), ordering="run_uuid")
    def run_link(self, record: AuditRecord) -> SafeString:
        if record.run_id is None:
            return format_html(
                '<code title="{}">{}</code> ({})',
                record.run_uuid,
                short_id(record.run_uuid),
                gettext("deleted"),
            )
        return format_html(
            '<a href="{}"><code title="{}">{}</code></a>',
            run_url(record.run_id, self.admin_site.name),
            record.run_uuid,
            short_id(record.run_uuid),
        )

    @admin.display(description=_("status change"))
    def transition(self, record: AuditRecord) -> str:
        return transition(record)

    @admin.display(description=_("detail"))
    def detail_display(self, record: AuditRecord) -> SafeString | str:
        return audit_detail(record, self.admin_site.name) or self.get_empty_value_display()
