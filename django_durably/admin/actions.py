"""Operating runs from the admin: bulk actions, and buttons on a run's page.

Both call :mod:`django_durably.operations` for each run, never the models, with
``actor=request.user`` and ``source="admin"``. A bulk action narrows the selection to the runs its
state set allows, acts on each, catches each typed error (a worker finished the run meanwhile, the
job is gone, ...), and reports one message with a count per outcome.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, gettext_noop, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from django_durably import operations
from django_durably.admin.display import STATUS_ORDER, run_url, short_id, status_badge
from django_durably.exceptions import (
    InvalidTrigger,
    JobNotFound,
    PendingRunExists,
    RunNotFound,
    RunStateError,
)
from django_durably.models import (
    CANCELLABLE_STATUSES,
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    Run,
    RunQuerySet,
    RunStatus,
)

if TYPE_CHECKING:
    _RunAdmin = admin.ModelAdmin[Run]
else:  # Generic in django-stubs only: ModelAdmin cannot be subscripted at runtime.
    _RunAdmin = admin.ModelAdmin

SOURCE = "admin"
"""The ``source`` of every audit record written from the admin."""

CONFIRM_LIST_LIMIT = 100
"""Runs listed by name on the delete confirmation page."""

# What a bulk action reports for runs it left alone, by status or by the error it met.
_STILL_PENDING = gettext_noop("%(count)d still pending")
_STILL_RUNNING = gettext_noop("%(count)d still running")
_ALREADY_COMPLETED = gettext_noop("%(count)d already completed")
_CANCEL_SKIPS: dict[str, str] = {
    RunStatus.COMPLETED: _ALREADY_COMPLETED,
    RunStatus.FAILED: gettext_noop("%(count)d already failed"),
    RunStatus.CANCELLED: gettext_noop("%(count)d already cancelled"),
}
_RESUME_SKIPS: dict[str, str] = {
    RunStatus.PENDING: gettext_noop("%(count)d already pending"),
    RunStatus.LEASED: _STILL_RUNNING,
    RunStatus.COMPLETED: _ALREADY_COMPLETED,
}
_UNFINISHED_SKIPS: dict[str, str] = {
    RunStatus.PENDING: _STILL_PENDING,
    RunStatus.LEASED: _STILL_RUNNING,
}
_GONE = gettext_noop("%(count)d already deleted")
_BLOCKED = gettext_noop("%(count)d blocked by a pending run with the same concurrency key")
_NO_JOB = gettext_noop("%(count)d whose job is no longer registered")
_BAD_INPUT = gettext_noop("%(count)d whose input the job no longer accepts")
_ALREADY_RETRIGGERED = gettext_noop("%(count)d already retriggered from this page")


class RunActionForm(helpers.ActionForm):
    """Django's action form, plus a key made for each page load: sending the same page twice (a
    double click, a reload that resubmits) retriggers each run once."""

    idempotency_key = forms.CharField(widget=forms.HiddenInput, required=False, label="")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["idempotency_key"].initial = uuid.uuid4().hex


class Report:
    """What a bulk action did to the selected runs: ``"3 runs cancelled; 1 already completed."``"""

    def __init__(self, done: Any, skips: dict[str, str]) -> None:
        self._done = done  # ngettext_lazy(singular, plural, "count")
        self._skips: dict[str, str] = dict(skips)
        self.done = 0
        self.skipped: Counter[str] = Counter()

    def skip_status(self, status: str, count: int = 1) -> None:
        """``count`` runs left alone because they are ``status``."""
        self.skip(self._skips.get(status, "%(count)d " + status), count)

    def skip(self, phrase: str, count: int = 1) -> None:
        self.skipped[phrase] += count

    def message(self) -> str:
        parts = [str(self._done % {"count": self.done})]
        parts += [gettext(phrase) % {"count": n} for phrase, n in self.skipped.items()]
        return "; ".join(parts) + "."

    @property
    def level(self) -> int:
        return messages.WARNING if self.skipped else messages.SUCCESS


def as_run_queryset(queryset: QuerySet[Run]) -> RunQuerySet:
    """The action's selection, with the state-set predicates of :class:`RunQuerySet`."""
    if isinstance(queryset, RunQuerySet):
        return queryset
    return Run.objects.using(queryset.db).filter(pk__in=queryset.values("pk"))


def _user_may(request: HttpRequest, *codenames: str) -> bool:
    return any(request.user.has_perm(f"durably.{codename}") for codename in codenames)


class RunOperationsAdmin(_RunAdmin):
    """The actions and buttons of :class:`~django_durably.admin.runs.RunAdmin`."""

    actions = ["cancel_runs", "resume_runs", "retrigger_runs", "delete_runs"]
    action_form = RunActionForm

    # -- permissions ---------------------------------------------------------------------------

    def has_cancel_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return _user_may(request, "cancel_run", "change_run")

    def has_resume_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return _user_may(request, "resume_run", "change_run")

    def has_retrigger_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return _user_may(request, "retrigger_run", "change_run")

    def has_delete_finished_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        """``durably.delete_run``, used by :meth:`delete_runs` only (Django's delete is off)."""
        return _user_may(request, "delete_run")

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        """The actions above, without Django's ``delete_selected`` (it would bypass the guarded
        delete). ``action_location`` is passed on where Django has it (6.1 and later)."""
        if action_location is None:
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
        actions.pop("delete_selected", None)
        return actions

    # -- bulk actions --------------------------------------------------------------------------

    def _act_on_each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Run],
        targets: RunQuerySet,
        report: Report,
        act: Callable[[uuid.UUID], bool],
    ) -> None:
        """Call ``act`` on each of ``targets`` (the selection narrowed to the runs the action can
        change) and report the other selected runs by status. ``act`` returns whether it changed
        the run; typed errors (lost races, a job gone) are counted, never raised."""
        left_out = Counter(
            queryset.exclude(pk__in=targets.values("pk")).values_list("status", flat=True)
        )
        for status in sorted(left_out, key=STATUS_ORDER.index):
            report.skip_status(status, left_out[status])
        for run_id in list(targets.order_by().values_list("pk", flat=True)):
            try:
                changed = act(run_id)
            except RunStateError as exc:
                report.skip_status(exc.status)
            except RunNotFound:
                report.skip(_GONE)
            except PendingRunExists:
                report.skip(_BLOCKED)
            except JobNotFound:
                report.skip(_NO_JOB)
            except InvalidTrigger:
                report.skip(_BAD_INPUT)
            else:
                report.done += changed
        self.message_user(request, report.message(), report.level)

    @admin.action(description=_("Cancel selected runs"), permissions=["cancel"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        report = Report(
            ngettext_lazy("%(count)d run cancelled", "%(count)d runs cancelled", "count"),
            _CANCEL_SKIPS,
        )

        def act(run_id: uuid.UUID) -> bool:
            result = operations.cancel_run(run_id, actor=request.user, source=SOURCE)
            if not result.cancelled:
                report.skip_status(RunStatus.CANCELLED)
            return result.cancelled

        targets = as_run_queryset(queryset).cancellable()
        self._act_on_each(request, queryset, targets, report, act)

    @admin.action(description=_("Resume selected runs"), permissions=["resume"])
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        report = Report(
            ngettext_lazy("%(count)d run resumed", "%(count)d runs resumed", "count"),
            _RESUME_SKIPS,
        )

        def act(run_id: uuid.UUID) -> bool:
            operations.resume_run(run_id, actor=request.user, source=SOURCE)
            return True

        targets = as_run_queryset(queryset).resumable()
        self._act_on_each(request, queryset, targets, report, act)

    @admin.action(description=_("Retrigger selected runs"), permissions=["retrigger"])
    def retrigger_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        report = Report(
            ngettext_lazy("%(count)d run retriggered", "%(count)d runs retriggered", "count"),
            _UNFINISHED_SKIPS,
        )

        key = request.POST.get("idempotency_key") or None

        def act(run_id: uuid.UUID) -> bool:
            new_run = operations.retrigger_run(
                run_id, actor=request.user, source=SOURCE, idempotency_key=key
            )
            if new_run.disposition == "idempotent":
                report.skip(_ALREADY_RETRIGGERED)
                return False
            return True

        targets = as_run_queryset(queryset).finished()
        self._act_on_each(request, queryset, targets, report, act)

    @admin.action(description=_("Delete selected finished runs"), permissions=["delete_finished"])
    def delete_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> TemplateResponse | None:
        """Asks for confirmation, then deletes the finished runs of the selection."""
        targets = as_run_queryset(queryset).finished()
        if request.POST.get("post") != "yes" and targets.exists():
            return self._confirm_delete(request, queryset, targets)
        report = Report(
            ngettext_lazy("%(count)d run deleted", "%(count)d runs deleted", "count"),
            _UNFINISHED_SKIPS,
        )

        def act(run_id: uuid.UUID) -> bool:
            operations.delete_run(run_id, actor=request.user, source=SOURCE)
            return True

        self._act_on_each(request, queryset, targets, report, act)
        return None

    def _confirm_delete(
        self, request: HttpRequest, queryset: QuerySet[Run], targets: RunQuerySet
    ) -> TemplateResponse:
        """The confirmation page; its form posts back the finished runs only."""
        kept = Counter(
            queryset.exclude(pk__in=targets.values("pk")).values_list("status", flat=True)
        )
        ids = list(targets.values_list("pk", flat=True))
        shown = targets.only("id", "job_name", "status")[:CONFIRM_LIST_LIMIT]
        site = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Delete finished runs"),
            "subtitle": None,
            "opts": self.opts,
            "runs": [
                (run, short_id(run.pk), run_url(run.pk, site), status_badge(run.status))
                for run in shown
            ],
            "count": len(ids),
            "more": max(len(ids) - CONFIRM_LIST_LIMIT, 0),
            "ids": ids,
            "kept": [
                (RunStatus(status).label, kept[status])
                for status in sorted(kept, key=STATUS_ORDER.index)
            ],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = site
        return TemplateResponse(request, "admin/durably/run/delete_runs_confirmation.html", context)

    # -- buttons on a run's page ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        views = [
            ("cancel", self.cancel_view),
            ("resume", self.resume_view),
            ("retrigger", self.retrigger_view),
        ]
        urls = [
            path(
                f"<path:object_id>/{action}/",
                self.admin_site.admin_view(view),
                name=f"{prefix}_{action}",
            )
            for action, view in views
        ]
        return urls + super().get_urls()

    def buttons(self, request: HttpRequest, run: Run) -> list[dict[str, str]]:
        """The buttons the run's status and the user's permissions allow."""
        prefix = f"admin:{self.opts.app_label}_{self.opts.model_name}"
        candidates = [
            ("cancel", _("Cancel run"), CANCELLABLE_STATUSES, self.has_cancel_permission),
            ("resume", _("Resume run"), RESUMABLE_STATUSES, self.has_resume_permission),
            ("retrigger", _("Retrigger run"), TERMINAL_STATUSES, self.has_retrigger_permission),
        ]
        return [
            {
                "action": action,
                "label": str(label),
                "url": reverse(
                    f"{prefix}_{action}",
                    args=(quote(str(run.pk)),),
                    current_app=self.admin_site.name,
                ),
                # A retrigger creates a run: the page's own key makes a second click (or a
                # resubmitted form) return the run the first one created.
                "idempotency_key": uuid.uuid4().hex if action == "retrigger" else "",
            }
            for action, label, statuses, allowed in candidates
            if run.status in statuses and allowed(request, run)
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,  # noqa: FBT001, FBT002 - Django's signature
        change: bool = False,  # noqa: FBT001, FBT002
        form_url: str = "",
        obj: Run | None = None,
    ) -> HttpResponse:
        if change and obj is not None:
            context["durably_buttons"] = self.buttons(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _button_view(
        self,
        request: HttpRequest,
        object_id: str,
        allowed: Callable[[HttpRequest, Run | None], bool],
        act: Callable[[Run], HttpResponse],
    ) -> HttpResponse:
        """POST only, with the permission; the outcome or the typed error becomes a message."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not allowed(request, None):
            raise PermissionDenied
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(gettext("No run exists with id %(id)s.") % {"id": object_id})
        try:
            return act(run)
        except RunNotFound as exc:  # deleted meanwhile
            self.message_user(request, str(exc), messages.ERROR)
            changelist = f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
            return HttpResponseRedirect(reverse(changelist, current_app=self.admin_site.name))
        except (RunStateError, PendingRunExists, JobNotFound, InvalidTrigger) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(run_url(run.pk, self.admin_site.name))

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(run: Run) -> HttpResponse:
            result = operations.cancel_run(run.pk, actor=request.user, source=SOURCE)
            if not result.cancelled:
                message, level = gettext("Run %(id)s was already cancelled."), messages.WARNING
            else:
                message, level = gettext("Run %(id)s cancelled."), messages.SUCCESS
                if result.from_status == RunStatus.LEASED:
                    message += " " + gettext("Its worker stops at the next step boundary.")
            self.message_user(request, message % {"id": short_id(run.pk)}, level)
            return HttpResponseRedirect(run_url(run.pk, self.admin_site.name))

        return self._button_view(request, object_id, self.has_cancel_permission, act)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(run: Run) -> HttpResponse:
            operations.resume_run(run.pk, actor=request.user, source=SOURCE)
            message = gettext(
                "Run %(id)s resumed: it is pending again, and its completed steps will be "
                "replayed, not run again."
            )
            self.message_user(request, message % {"id": short_id(run.pk)}, messages.SUCCESS)
            return HttpResponseRedirect(run_url(run.pk, self.admin_site.name))

        return self._button_view(request, object_id, self.has_resume_permission, act)

    def retrigger_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(run: Run) -> HttpResponse:
            new_run = operations.retrigger_run(
                run.pk,
                actor=request.user,
                source=SOURCE,
                idempotency_key=request.POST.get("idempotency_key") or None,
            )
            if new_run.disposition == "idempotent":
                text, level = gettext("This run was already retriggered from run"), messages.INFO
            else:
                text, level = gettext("This is a new run, retriggered from run"), messages.SUCCESS
            message = format_html(
                '{} <a href="{}">{}</a>.',
                text,
                run_url(run.pk, self.admin_site.name),
                short_id(run.pk),
            )
            self.message_user(request, message, level)
            return HttpResponseRedirect(run_url(new_run.pk, self.admin_site.name))

        return self._button_view(request, object_id, self.has_retrigger_permission, act)
