"""The list filters, and the change list that checks the filter values of a query string first.

Django's admin hands any ``?field=value`` of the query string to the database. PostgreSQL refuses a
text value with a NUL character (the driver raises before sending it), which Django does not catch
when the query runs, so ``?job=%00`` was a server error. :class:`CheckedChangeList` leaves out such a
value and says so, as Django's search box does with its own "Null characters are not allowed.".
It also reads ``running``, the admin's word for ``leased``, in status filters.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_durably.models import Run, RunStatus

STATUS_ALIASES = {"running": RunStatus.LEASED.value}
"""What a status filter also accepts: the admin's word for a status (DESIGN.md section 3)."""

STATUS_PARAMETERS = ("status", "status__exact", "status__in")
"""The query-string keys that filter by status; ``status`` is read as ``status__exact``, so the
filter sidebar shows it selected."""


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


class RetryingFilter(admin.SimpleListFilter):
    """Runs waiting to be tried again after a failure (``Run.objects.retrying()``), or the others."""

    title = _("retrying")
    parameter_name = "retrying"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", gettext("Yes")), ("no", gettext("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        retrying = Run.objects.retrying()
        if self.value() == "yes":
            return queryset & retrying
        if self.value() == "no":
            return queryset.exclude(pk__in=retrying.values("pk"))
        return queryset


class ParentFilter(admin.SimpleListFilter):
    """Runs triggered by a step of another run (child runs), the others, or the child runs of one
    run (``?parent=<run id>``, where a run's page links to)."""

    title = _("parent run")
    parameter_name = "parent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = [("none", gettext("No parent")), ("any", gettext("Child runs"))]
        parent = self._parent()
        if parent is not None:  # shown selected, as a choice of its own
            choices.append((str(parent), gettext("Child runs of %(id)s") % {"id": str(parent)[:8]}))
        return choices

    def _parent(self) -> uuid.UUID | None:
        value = self.value()
        if value in (None, "none", "any"):
            return None
        try:
            return uuid.UUID(str(value))
        except ValueError:
            return None

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        if value == "none":
            return queryset.filter(parent__isnull=True)
        if value == "any":
            return queryset.filter(parent__isnull=False)
        parent = self._parent()
        if parent is None:  # Django's admin then shows its "?e=1" page, as for a bad lookup
            raise IncorrectLookupParameters(f"{value!r} is not a run id.")
        return queryset.filter(parent_id=parent)


def _status(value: str) -> str:
    return STATUS_ALIASES.get(value.strip().lower(), value)


class CheckedChangeList(ChangeList):
    """A change list whose filter values never reach the database with a NUL character."""

    status_parameters: tuple[str, ...] = ()
    """Keys whose values are statuses (aliases are read); none by default."""

    _checked = False

    def get_filters(self, request: HttpRequest) -> Any:
        if not self._checked:  # get_filters runs again for each facet count
            self._checked = True
            self._check_filter_values(request)
        return super().get_filters(request)

    def _check_filter_values(self, request: HttpRequest) -> None:
        ignored = [
            key
            for key, values in self.filter_params.items()
            if "\x00" in key or any("\x00" in value for value in values)
        ]
        for key in ignored:
            del self.filter_params[key]
            self.params.pop(key, None)
        if ignored:
            names = ", ".join(sorted(key.replace("\x00", "\\x00") for key in ignored))
            messages.error(
                request,
                gettext("Filter %(names)s ignored: null characters are not allowed.")
                % {"names": names},
            )
        for key in self.status_parameters:
            if key not in self.filter_params:
                continue
            values = self.filter_params.pop(key)
            self.params.pop(key, None)
            if key == "status__in":
                values = [",".join(_status(v) for v in value.split(",")) for value in values]
            else:
                key, values = "status__exact", [_status(value) for value in values]
            self.filter_params[key] = values
            self.params[key] = values[-1]
